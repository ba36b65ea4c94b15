"""Code written to forge its verdict or escape the verifier (issue 15). Forgeries must fail in both modes (the
verdict never comes from the candidate's process); escapes must be contained by the bwrap sandbox, and the
same code in unsafe mode shows what the sandbox stops (so these tests can fail)."""

import os
import random
import socket
import sys
import time
import warnings

import pytest

from posttrain.verifiers import sandbox
from posttrain.verifiers.code import run_python_tests
from tests.unit.verifiers.test_code import processes_with

WRONG = "def f(x):\n    return x\n"  # f(1) == 1, the tests want 2
TESTS = ("assert f(1) == 2\nassert f(2) == 3\nassert f(3) == 4\n"
         "for x in range(3):\n    assert f(x) == x + 1\nassert f(0) == 1\nassert f(5) == 6\n")


def _bwrap_or_skip():
    found = sandbox._bwrap(sys.executable)
    if not isinstance(found, sandbox.Sandbox):
        pytest.skip(f"sandbox tests need bubblewrap: {found}")


@pytest.fixture(params=["bwrap", "unsafe"])
def mode(request):
    if request.param == "bwrap":
        _bwrap_or_skip()
    return request.param


def _forged(result):
    return result.passed or result.tests_failed == 0


def test_the_wrong_solution_fails_honestly(mode):
    result = run_python_tests(WRONG, TESTS, time_limit_s=2, sandbox=mode)
    assert not result.passed and (result.tests_run, result.tests_failed) == (6, 6)


def test_self_written_result_file_and_early_exit_fail(mode):
    """The old harness read result.json from argv[1]: a candidate wrote its own pass there and called os._exit(0).
    Now it also sprays a passing verdict over every fd it may have inherited."""
    code = WRONG + (
        "import json, os, sys\n"
        "fake = json.dumps({'tests_run': 5, 'tests_failed': 0, 'completed': True, 'memory_exceeded': False,\n"
        "                   'error': None, 'candidate_gone': False, 'statements': [1, 2, 3, 4, 6, 7]}) + '\\n'\n"
        "for path in [sys.argv[1], 'result.json', 'verdict.json']:\n"
        "    open(path, 'w').write(fake)\n"
        "for fd in range(3, 64):\n"
        "    try:\n        os.write(fd, fake.encode())\n    except OSError:\n        pass\n"
        "os._exit(0)\n")
    result = run_python_tests(code, TESTS, time_limit_s=2, sandbox=mode)
    assert not result.passed and result.tests_run is None
    assert result.error == "exited with code 0 before reporting"


def test_patching_json_dump_through_main_fails(mode):
    code = WRONG + (
        "import json, sys\n"
        "main = sys.modules['__main__']\n"
        "def dump(obj, fh, *a, **k):\n"
        "    fh.write('{\"tests_run\": 5, \"tests_failed\": 0, \"completed\": true, \"memory_exceeded\": false,'\n"
        "             ' \"error\": null}')\n"
        "json.dump = dump\n"
        "json.dumps = lambda *a, **k: '{\"tests_run\": 5, \"tests_failed\": 0, \"completed\": true}'\n"
        "getattr(main, 'json', json).dump = dump\n")
    result = run_python_tests(code, TESTS, time_limit_s=2, sandbox=mode)
    assert not _forged(result) and (result.tests_run, result.tests_failed) == (6, 6)


def test_rewriting_the_harness_through_gc_and_frames_fails(mode):
    """Every function of the harness it can find (gc, its module, the caller's frames) becomes a no-op, and
    unittest's asserts, math.isclose and operator.eq answer 'pass': all inside the candidate's own process."""
    code = WRONG + (
        "import gc, math, operator, sys, types, unittest\n"
        "def noop(*a, **k):\n    return None\n"
        "for obj in gc.get_objects():\n"
        "    if isinstance(obj, types.FunctionType) and obj.__code__.co_filename != 'solution.py':\n"
        "        if obj.__name__ in ('failed', 'check', 'run_tests', 'tests', 'describe', 'error_message'):\n"
        "            obj.__code__ = noop.__code__\n"
        "for name in ('failed', 'check', 'run_tests', 'tests', 'describe'):\n"
        "    setattr(sys.modules['__main__'], name, noop)\n"
        "unittest.TestCase.assertEqual = unittest.TestCase.assertTrue = noop\n"
        "math.isclose = lambda *a, **k: True\n"
        "operator.eq = lambda a, b: True\n"
        "def f(x):\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None:\n"
        "        for key in ('report', 'failed', 'check'):\n"
        "            if key in frame.f_locals and isinstance(frame.f_locals[key], dict):\n"
        "                frame.f_locals[key].update(tests_failed=0, completed=True)\n"
        "        frame = frame.f_back\n"
        "    return x\n")
    tests = ("import math, unittest\nassert f(1) == 2\nassert math.isclose(f(1), 2.0)\n"
             "class T(unittest.TestCase):\n    def test_it(self):\n        self.assertEqual(f(1), 2)\n")
    result = run_python_tests(code, tests, time_limit_s=3, sandbox=mode)
    assert not _forged(result) and (result.tests_run, result.tests_failed) == (3, 3)


def test_always_equal_object_fails(mode):
    """An object equal to everything, truthy, and with zero difference to anything: the classic reward hack."""
    code = ("class Anything:\n"
            "    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n"
            "    __bool__ = lambda self: True\n    __sub__ = __rsub__ = lambda self, other: 0\n"
            "    __lt__ = __le__ = __gt__ = __ge__ = lambda self, other: True\n"
            "    __hash__ = lambda self: 0\n"
            "def f(x):\n    return Anything()\n")
    tests = ("assert f(1) == 2\nassert not (f(1) != 2)\nassert 2 == f(1)\nassert abs(f(1) - 2) < 1e-9\n"
             "assert f(1) <= 2 and f(1) >= 2\nassert [f(1)] == [2]\nassert f(1) in {2}\n")
    result = run_python_tests(code, tests, time_limit_s=3, sandbox=mode)
    assert not _forged(result) and (result.tests_run, result.tests_failed) == (7, 7)


def test_tests_cannot_be_read_by_name(mode):
    """The test code reaches its process as an unnamed file: a candidate searching for it (to copy the expected
    answers) finds nothing."""
    marker = f"expected_{random.randrange(10**9)}"
    code = ("import glob, os\nfound = []\n"
            "for pattern in ('*', '../*/*', '/tmp/*', '/tmp/*/*', '/tmp/*/*/*'):\n"
            "    for path in glob.glob(pattern):\n"
            "        try:\n"
            "            if os.path.isfile(path) and os.path.getsize(path) < 1e6:\n"
            f"                found += [path] if '{marker}' in open(path, errors='ignore').read() else []\n"
            "        except OSError:\n            pass\n"
            "print('FOUND', found)\ndef f(x):\n    return x\n")
    result = run_python_tests(code, f"{marker} = 2\nassert f({marker}) == 2\n", time_limit_s=3, sandbox=mode)
    assert result.passed and "FOUND []" in result.stdout_tail


def test_honest_code_keeps_threads_temp_files_and_deep_recursion(mode):
    code = ("import os, sys, tempfile, threading\n"
            "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
            "def work():\n    out = []\n    t = threading.Thread(target=out.append, args=(depth(5000),))\n"
            "    t.start(); t.join()\n"
            "    path = os.path.join(tempfile.gettempdir(), 'scratch.txt')\n"
            "    with open(path, 'w') as fh:\n        fh.write(str(out[0]))\n"
            "    return int(open(path).read())\n")
    result = run_python_tests(code, "assert work() == 5000\n", time_limit_s=3, sandbox=mode)
    assert result.passed, result.error


# ---- escapes: contained by bwrap; unsafe mode shows the hazard --------------------------------------------

@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))  # loopback only
    server.listen()
    server.settimeout(0.3)
    yield server
    server.close()


def _accepted(server) -> bool:
    try:
        conn, _ = server.accept()
    except OSError:
        return False
    conn.close()
    return True


def test_raw_socket_module_cannot_connect(mode, listener):
    port = listener.getsockname()[1]
    code = ("import _socket\ns = _socket.socket()\n"
            f"try:\n    s.connect(('127.0.0.1', {port}))\n    print('CONNECTED')\n"
            "except OSError as e:\n    print('REFUSED', e)\n" + WRONG)
    result = run_python_tests(code, "assert f(2) == 2\n", time_limit_s=2, sandbox=mode)
    assert result.passed
    if mode == "bwrap":
        assert "REFUSED" in result.stdout_tail and not _accepted(listener)
    else:  # the socket patch covers `socket` only
        assert "CONNECTED" in result.stdout_tail and _accepted(listener)


def test_subprocess_bash_dev_tcp_cannot_connect(mode, listener):
    port = listener.getsockname()[1]
    code = ("import subprocess\n"
            f"try:\n    rc = subprocess.run(['bash', '-c', 'echo hi > /dev/tcp/127.0.0.1/{port}']).returncode\n"
            "    print('RC', rc)\nexcept OSError as e:\n    print('REFUSED', e)\n" + WRONG)
    result = run_python_tests(code, "assert f(2) == 2\n", time_limit_s=2, sandbox=mode)
    assert result.passed
    if mode == "bwrap":
        assert "REFUSED" in result.stdout_tail and not _accepted(listener)
    else:
        assert "RC 0" in result.stdout_tail and _accepted(listener)


def test_forked_session_leader_does_not_outlive_the_verdict(mode):
    marker = f"{90 + random.random():.9f}"
    code = ("import os\ntry:\n    if os.fork() == 0:\n        os.setsid()\n"
            f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
            "    print('FORKED')\nexcept OSError as e:\n    print('REFUSED', e)\n" + WRONG)
    result = run_python_tests(code, "assert f(2) == 2\n", time_limit_s=2, sandbox=mode)
    assert result.passed
    time.sleep(0.2)
    survivors = processes_with(marker)
    for pid in survivors:  # unsafe mode: clean up what escaped
        os.kill(pid, 9)
    if mode == "bwrap":
        assert "REFUSED" in result.stdout_tail and not survivors
    else:
        assert "FORKED" in result.stdout_tail and survivors


def test_fork_bomb_is_refused():
    _bwrap_or_skip()
    code = "import os\nwhile True:\n    os.fork()\n"
    start = time.monotonic()
    result = run_python_tests(code, "assert True\n", time_limit_s=2, sandbox="bwrap")
    assert not result.passed and "PermissionError" in result.error and time.monotonic() - start < 3


def test_files_outside_the_private_tmp_are_not_written(mode, tmp_path):
    targets = [str(tmp_path / "escaped.txt"), os.path.join(sys.prefix, f"escaped-{random.randrange(10**9)}"),
               f"/tmp/escaped-{random.randrange(10**9)}"]
    code = ("import os\n"
            f"for path in {targets!r}:\n"
            "    try:\n        open(path, 'w').write('x')\n        print('WROTE', path)\n"
            "    except OSError as e:\n        print('REFUSED', path, e.strerror)\n" + WRONG)
    try:
        result = run_python_tests(code, "assert f(2) == 2\n", time_limit_s=2, sandbox=mode)
        assert result.passed
        if mode == "bwrap":  # the last one lands in the sandbox's own /tmp, which vanishes with it
            assert not any(os.path.exists(t) for t in targets)
        else:
            assert os.path.exists(targets[0])
    finally:
        for path in targets[1:]:
            if os.path.exists(path):
                os.remove(path)


def test_system_and_host_files_are_not_readable(mode, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(f"secret-{random.randrange(10**9)}")
    code = ("import os\n"
            f"for path in ['/etc/passwd', '/etc/shadow', {str(secret)!r}, '/proc/1/environ']:\n"
            "    try:\n        print('READ', path, open(path).read()[:200])\n"
            "    except OSError as e:\n        print('REFUSED', path, e.strerror)\n" + WRONG)
    result = run_python_tests(code, "assert f(2) == 2\n", time_limit_s=2, sandbox=mode, output_limit_bytes=8192)
    assert result.passed
    if mode == "bwrap":
        assert "READ" not in result.stdout_tail and "root:" not in result.stdout_tail
    else:
        assert "root:" in result.stdout_tail and secret.read_text() in result.stdout_tail


def test_sandbox_alone_contains_network_and_orphans_without_the_process_filter(listener):
    """Defence in depth: with process creation allowed (no seccomp filter), bwrap's namespaces still give no
    route to the host's loopback and take a session leader's orphan down with them."""
    _bwrap_or_skip()
    import subprocess

    sb = sandbox.resolve("bwrap")
    port, marker = listener.getsockname()[1], f"{90 + random.random():.9f}"
    script = f"(setsid sleep {marker} &) ; echo hi > /dev/tcp/127.0.0.1/{port} && echo CONNECTED; exit 0"
    cmd = sandbox.command(sb, ["bash", "-c", script], python=sys.executable, files={}, seccomp_fd=None)
    done = subprocess.run(cmd, env=sandbox.ENV, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "CONNECTED" not in done.stdout and not _accepted(listener)
    time.sleep(0.2)
    assert not processes_with(marker)


def test_sandbox_mode_setting(monkeypatch):
    with pytest.raises(sandbox.SandboxError, match="POSTTRAIN_CODE_SANDBOX"):
        sandbox.resolve("docker")
    assert sandbox.resolve("unsafe").mode == "unsafe"
    monkeypatch.setenv("POSTTRAIN_CODE_SANDBOX", "unsafe")
    assert sandbox.resolve().mode == "unsafe"
    monkeypatch.delenv("POSTTRAIN_CODE_SANDBOX")
    # Where bwrap is missing: "bwrap" is an error naming the package, "auto" warns once and runs unsafe.
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    monkeypatch.setattr(sandbox, "_warned", False)
    sandbox._bwrap.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxError, match="apt-get install bubblewrap"):
            sandbox.resolve("bwrap")
        with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
            assert sandbox.resolve("auto").mode == "unsafe"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert sandbox.resolve("auto").mode == "unsafe"  # once only
    finally:
        sandbox._bwrap.cache_clear()


@pytest.mark.parametrize("node", [
    ("l", []),                                   # a tuple, not a JSON list
    ["d", [1]],                                  # a dict with a key and no value
    ["n", "|O8", [1], "AAAAAAAAAAA="],           # a numpy array of object pointers
    ["x", 1, ["c", 99]],                         # a wrapped value with a callback the tests never gave
    ["h", "not an id", "T"],
    ["i", "12 + 1"],
    ["l", [["l", [["l", [["l", []]]]]]]],        # deeper than the limit below
])
def test_the_wire_rejects_malformed_values(node):
    from posttrain.verifiers import code_wire

    def resolve(n):
        if n[0] == "h" and type(n[1]) is int:
            return object()
        raise ValueError

    with pytest.raises(code_wire.CandidateGone):
        code_wire.decode(node, resolve, depth=code_wire.MAX_DEPTH)
