"""Code verification (candidate and tests in separate processes); limits are short (1-2 s) to keep the suite
fast. Attacks on the verdict and the sandbox are in test_code_attacks.py."""

import os
import random
import time

import pytest

from posttrain.verifiers.code import extract_code, run_python_tests

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


def processes_with(marker: str) -> list[int]:
    """Live processes on this machine whose command line contains ``marker`` (zombies are dead, just unreaped)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{pid}/status") as fh:
                zombie = "\nState:\tZ" in fh.read()
        except OSError:
            continue
        if marker.encode() in cmdline and not zombie:
            found.append(int(pid))
    return found


def test_child_processes_are_killed_with_the_group():
    """Unsafe mode (no sandbox) still kills the process group on timeout; in the sandbox, processes are refused
    (test_code_attacks.py)."""
    marker = f"{90 + random.random():.9f}"  # a unique sleep argument to find the grandchild by
    code = ("import subprocess, time\n"
            f"child = subprocess.Popen(['sleep', '{marker}'])\n"
            "time.sleep(60)\n")
    start = time.monotonic()
    result = run_python_tests(code, "assert True\n", time_limit_s=1, sandbox="unsafe")
    assert result.timed_out and time.monotonic() - start < 4
    deadline = time.monotonic() + 2
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_with(marker)


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


def test_candidate_objects_classes_and_in_place_changes():
    """LeetCode-style classes, linked nodes, in-place edits of the tests' lists and dicts, generators, raised
    exceptions and plain-data subclasses all behave as if the tests ran beside the code."""
    code = ("import collections\n"
            "class Node:\n    def __init__(self, val, next=None):\n        self.val, self.next = val, next\n"
            "class Solution:\n"
            "    def reverse(self, head):\n        prev = None\n"
            "        while head:\n            head.next, prev, head = prev, head, head.next\n        return prev\n"
            "    def move_zeroes(self, nums):\n        nums.sort(key=lambda v: v == 0)\n"
            "def count(words, into):\n    for w in words:\n        into[w] = into.get(w, 0) + 1\n"
            "def evens(n):\n    yield from range(0, n, 2)\n"
            "def positive(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
            "Point = collections.namedtuple('Point', 'x y')\n"
            "def origin():\n    return Point(0, 0)\n")
    tests = ("s = Solution()\nhead = s.reverse(Node(1, Node(2, Node(3))))\nvals = []\n"
             "while head:\n    vals.append(head.val)\n    head = head.next\n"
             "assert vals == [3, 2, 1]\n"
             "nums = [0, 1, 0, 3]\ns.move_zeroes(nums)\nassert nums == [1, 3, 0, 0]\n"
             "seen = {}\ncount(['a', 'b', 'a'], seen)\nassert seen == {'a': 2, 'b': 1}\n"
             "assert list(evens(7)) == [0, 2, 4, 6] and 4 in evens(7) and 5 not in evens(7)\n"
             "try:\n    positive(-1)\n    raise AssertionError('no error')\nexcept ValueError as e:\n"
             "    assert str(e) == 'negative'\n"
             "assert origin() == (0, 0) and origin().x == 0\n"
             "assert isinstance(s, Solution) and isinstance(origin(), Point) and not isinstance(1, Solution)\n")
    result = run_python_tests(code, tests, time_limit_s=3)
    assert result.passed, result.error
    assert result.tests_run == 10


def test_callables_from_the_tests_can_be_passed_in():
    code = ("def apply_all(fn, xs, key=None):\n    return sorted((fn(x) for x in xs), key=key)\n"
            "def safe(fn, x):\n    try:\n        return fn(x)\n    except ValueError as e:\n        return 'caught ' + str(e)\n")
    tests = ("assert apply_all(lambda x: x * 10, [3, 1, 2], key=lambda v: -v) == [30, 20, 10]\n"
             "def bad(x):\n    raise ValueError('no')\nassert safe(bad, 1) == 'caught no'\n")
    result = run_python_tests(code, tests, time_limit_s=2)
    assert result.passed, result.error


def test_numpy_results_and_modules_the_code_imported():
    code = "import numpy as np\nimport math\ndef grid(n):\n    return np.arange(n * n).reshape(n, n)\n"
    tests = ("assert (grid(2) == np.array([[0, 1], [2, 3]])).all()\nassert grid(3).shape == (3, 3)\n"
             "assert int(grid(3).sum()) == 36 and math.isclose(float(grid(2)[1][1]), 3.0)\n")
    result = run_python_tests(code, tests, time_limit_s=5)
    assert result.passed, result.error


def test_names_shadowing_builtins_do_not_reach_the_tests():
    """The tests' ``sorted`` and ``len`` stay Python's own, whatever the candidate rebinds."""
    code = "sorted = lambda xs: [1, 2, 3]\nlen = lambda xs: 3\ndef f():\n    return [3, 1]\n"
    result = run_python_tests(code, "assert sorted(f()) == [1, 2, 3]\nassert len(f()) == 3\n", time_limit_s=2)
    assert not result.passed and (result.tests_run, result.tests_failed) == (2, 2)


def test_candidate_objects_never_equal_test_values_but_compare_among_themselves():
    code = ("class V:\n    def __init__(self, x):\n        self.x = x\n"
            "    def __eq__(self, other):\n        return True\n"
            "    def __add__(self, other):\n        return V(self.x + other.x)\n"
            "    def __len__(self):\n        return self.x\n")
    tests = ("assert (V(1) + V(2)).x == 3\nassert V(1) == V(2)\nassert len(V(4)) == 4\n"
             "assert V(1) != 1\nassert not (V(1) == 1)\n"
             "try:\n    V(1) + 1\n    raise AssertionError('mixed arithmetic')\nexcept TypeError:\n    pass\n")
    result = run_python_tests(code, tests, time_limit_s=2)
    assert result.passed, result.error


def test_the_verifier_folder_does_not_shadow_the_standard_library():
    """The scripts live beside this package's math.py and code.py: the code under test still gets the stdlib's."""
    code = "import code, math\nSTDLIB = hasattr(code, 'interact') and hasattr(math, 'sqrt')\n"
    result = run_python_tests(code, "assert STDLIB is True\n", time_limit_s=2, sandbox="unsafe")
    assert result.passed, result.error


def test_plain_values_cross_both_ways_exactly():
    code = "def echo(x):\n    return x\ndef big():\n    return 3 ** 30000\n"
    tests = ("v = (1, 2.5, -0.0, 1 + 2j, b'\\x00\\xff', 'caf\\u00e9 \\u2603', None, True, [1, [2]], {'a': {1, 2}},\n"
             "     frozenset({3}), bytearray(b'ab'), {(1, 2): 'tuple key'})\n"
             "assert echo(v) == v and [type(x) for x in echo(v)] == [type(x) for x in v]\n"
             "assert big() == 3 ** 30000 and echo(-(3 ** 30000)) == -(3 ** 30000)\n"
             "import math\nassert math.isnan(echo(float('nan'))) and echo(float('-inf')) == float('-inf')\n")
    result = run_python_tests(code, tests, time_limit_s=3)
    assert result.passed, result.error


def test_flooding_the_output_is_stopped():
    result = run_python_tests("import sys\nsys.stdout.write('x' * (9 << 20))\n", "assert True\n", time_limit_s=3)
    assert not result.passed and "File too large" in result.error  # Python ignores SIGXFSZ: the write fails
