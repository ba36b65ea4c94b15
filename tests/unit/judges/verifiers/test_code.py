"""Code verification in a subprocess; limits are short (1-2 s) to keep the suite fast."""

import time

import pytest

from posttrain.judges.verifiers.code import extract_code, run_python_tests

SOLUTION = "def add(a, b):\n    return a + b\n"


def test_extract_code():
    response = "Usage:\n```python\nadd(1, 2)\n```\nSolution:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    assert extract_code(response) == SOLUTION
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```py\nx = 2\n``` and ```\nx = 3\n```") == "x = 2\n"  # a python block wins over bare
    assert extract_code("x = 4") == "x = 4"


def test_passing_solution_with_asserts():
    result = run_python_tests(SOLUTION, "assert add(1, 2) == 3\nfor a in range(3):\n    assert add(a, 0) == a\n",
                              time_limit_s=2)
    assert result.passed and (result.tests_run, result.tests_failed) == (2, 0)
    assert not result.timed_out and not result.memory_exceeded and result.error is None


def test_failing_assertion_is_counted_and_later_tests_still_run():
    result = run_python_tests(SOLUTION, "assert add(1, 1) == 3\nassert add(1, 2) == 3\n", time_limit_s=2)
    assert not result.passed and (result.tests_run, result.tests_failed) == (2, 1)
    assert result.error == "tests.py line 1: AssertionError"


def test_unittest_and_pytest_style_tests():
    tests = ("import unittest\n\nclass T(unittest.TestCase):\n"
             "    def test_ok(self):\n        self.assertEqual(add(1, 2), 3)\n"
             "    def test_bad(self):\n        self.assertEqual(add(1, 2), 4)\n\n"
             "def test_fn():\n    assert add(2, 2) == 4\n")
    result = run_python_tests(SOLUTION, tests, time_limit_s=2)
    assert not result.passed and (result.tests_run, result.tests_failed) == (3, 1)
    assert "3 != 4" in result.error
    fixed = run_python_tests(SOLUTION, tests.replace("add(1, 2), 4", "add(1, 2), 3"), time_limit_s=2)
    assert fixed.passed and (fixed.tests_run, fixed.tests_failed) == (3, 0)


def test_humaneval_style_check_call():
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)\n"
    assert run_python_tests(SOLUTION, tests, time_limit_s=2).passed
    assert not run_python_tests("def add(a, b):\n    return a - b\n", tests, time_limit_s=2).passed


@pytest.mark.parametrize("code, error", [
    ("def add(a, b)\n    return a + b\n", "SyntaxError"),
    ("raise SystemExit(0)\n", "SystemExit"),
    ("import os\nos._exit(0)\n", "exited with code 0 before reporting"),
])
def test_broken_or_escaping_solutions_fail(code, error):
    result = run_python_tests(code, "assert add(1, 2) == 3\n", time_limit_s=2)
    assert not result.passed and error in result.error


def test_no_tests_is_not_a_pass():
    result = run_python_tests(SOLUTION, "x = add(1, 2)\n", time_limit_s=2)
    assert not result.passed and result.tests_run == 0 and result.error == "no tests found in the test code"


def test_infinite_loop_times_out_within_the_limit():
    start = time.monotonic()
    result = run_python_tests("while True:\n    pass\n", "assert True\n", time_limit_s=1)
    assert time.monotonic() - start < 4
    assert result.timed_out and not result.passed and result.tests_run is None
    assert result.error == "timed out after 1.0 s"


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "\nState:\tZ" not in fh.read()  # a zombie is dead, just not yet reaped by its new parent
    except FileNotFoundError:
        return False


def test_child_processes_are_killed_with_the_group():
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\ntime.sleep(60)\n")
    start = time.monotonic()
    result = run_python_tests(code, "assert True\n", time_limit_s=1)
    assert result.timed_out and time.monotonic() - start < 4
    pid = int(result.stdout_tail.split()[0])
    deadline = time.monotonic() + 2
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_memory_bomb_is_stopped():
    result = run_python_tests("x = bytearray(4 * 1024 ** 3)\n", "assert True\n", time_limit_s=2, memory_limit_mb=256)
    assert result.memory_exceeded and not result.passed and not result.timed_out


@pytest.mark.parametrize("code", [
    "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=1)\n",
    "import socket\nsocket.socket().connect(('93.184.216.34', 80))\n",
])
def test_network_is_refused(code):
    result = run_python_tests(code, "assert True\n", time_limit_s=2)
    assert not result.passed and "network access is disabled" in result.error


def test_output_is_captured_and_truncated():
    result = run_python_tests("print('x' * 10000)\nprint('end')\n", "assert True\n", time_limit_s=2,
                              output_limit_bytes=100)
    assert result.passed and len(result.stdout_tail) == 100 and result.stdout_tail.endswith("end\n")
