"""Run a response's Python code against unit tests in a limited subprocess.

The child is ``python -I`` in a fresh temporary folder with a minimal environment, its own process group
(killed as a whole on timeout), ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (output and files) and
the socket module patched to refuse connections. This stops honest mistakes (infinite loops, memory bombs,
accidental network calls); it is NOT a sandbox against code written to escape it (``_socket`` is still there,
the file system is readable). Run untrusted code inside a container as well.

Test code may be plain top-level statements (``assert f(1) == 2``, or HumanEval's ``check(f)``), pytest-style
``def test_*()`` functions, or ``unittest.TestCase`` classes; they run in the solution's namespace.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Runs inside the child. Each top-level test statement is one test: a failing one is counted and the rest still
# run; a failing setup statement (def, import, assignment) ends the run, since later tests would depend on it.
_HARNESS = r'''
import ast, json, socket, sys, traceback, unittest

def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while verifying code")

class _NoNetworkSocket(socket.socket):  # a subclass, so modules that subclass socket.socket still import
    def __init__(self, *args, **kwargs):
        _no_network()

socket.socket = _NoNetworkSocket
socket.create_connection = socket.getaddrinfo = socket.socketpair = _no_network
sys.setrecursionlimit(10000)

result_path, solution_path, tests_path = sys.argv[1:4]
report = {"tests_run": 0, "tests_failed": 0, "completed": False, "memory_exceeded": False, "error": None}
SETUP = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign,
         ast.AnnAssign, ast.AugAssign, ast.Pass)

def failed(e, where):
    report["tests_failed"] += 1
    if report["error"] is None:
        report["error"] = where + ": " + "".join(traceback.format_exception_only(type(e), e)).strip()[-500:]

try:
    solution = open(solution_path, encoding="utf-8").read()
    tests = open(tests_path, encoding="utf-8").read()  # read before the solution runs: it may chdir
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    exec(compile(solution, "solution.py", "exec"), ns)
    for node in ast.parse(tests, "tests.py").body:
        code = compile(ast.Module([node], type_ignores=[]), "tests.py", "exec")
        if isinstance(node, SETUP) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            exec(code, ns)
            continue
        report["tests_run"] += 1
        try:
            exec(code, ns)
        except (MemoryError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            failed(e, f"tests.py line {node.lineno}")
    for name, fn in list(ns.items()):
        defined_in_tests = getattr(getattr(fn, "__code__", None), "co_filename", "") == "tests.py"
        if name.startswith("test") and callable(fn) and defined_in_tests:
            report["tests_run"] += 1
            try:
                fn()
            except (MemoryError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:
                failed(e, name)
    cases = [v for v in ns.values() if isinstance(v, type) and issubclass(v, unittest.TestCase)
             and not v.__module__.startswith("unittest")]
    if cases:
        suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(c) for c in cases)
        outcome = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
        report["tests_run"] += outcome.testsRun
        problems = outcome.failures + outcome.errors
        report["tests_failed"] += len(problems) + len(outcome.unexpectedSuccesses)
        if problems and report["error"] is None:
            report["error"] = problems[0][1].strip().splitlines()[-1][-500:]
    report["completed"] = True
except MemoryError:
    report["memory_exceeded"], report["error"] = True, "MemoryError"
except BaseException as e:
    report["error"] = "".join(traceback.format_exception_only(type(e), e)).strip()[-500:]
with open(result_path, "w", encoding="utf-8") as fh:
    json.dump(report, fh)
'''


@dataclass
class CodeResult:
    """``passed``: the code ran to the end, at least one test ran and none failed. ``tests_run``/``tests_failed``
    are None when the run ended before the harness could report (timeout, crash, output limit)."""

    passed: bool
    tests_run: int | None
    tests_failed: int | None
    timed_out: bool
    memory_exceeded: bool
    returncode: int | None
    error: str | None
    stdout_tail: str
    stderr_tail: str
    duration_s: float


def extract_code(response: str) -> str:
    """The last ```python (or ```py) fenced block of ``response``; else the last bare ``` block; else the whole
    response. The last block, because models tend to show usage first and the final solution last."""
    for lang in (r"(?:python|py|python3)", r""):
        blocks = re.findall(rf"```{lang}[ \t]*\n(.*?)```", response, flags=re.DOTALL | re.IGNORECASE)
        if blocks:
            return blocks[-1]
    return response


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int):
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _tail(path: Path, limit: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - limit))
        return fh.read().decode("utf-8", errors="replace")


def run_python_tests(code: str, tests: str, *, time_limit_s: float = 5.0, memory_limit_mb: int = 512,
                     output_limit_bytes: int = 4096, python: str = sys.executable) -> CodeResult:
    """Run ``code`` then ``tests`` (in ``code``'s namespace) in a limited child process; see the module doc.
    stdout/stderr go to files capped at 8 MiB (writing more kills the child) and come back as their last
    ``output_limit_bytes``."""
    with tempfile.TemporaryDirectory(prefix="posttrain-verify-") as tmp:
        root = Path(tmp)
        (root / "solution.py").write_text(code, encoding="utf-8")
        (root / "tests.py").write_text(tests, encoding="utf-8")
        (root / "_harness.py").write_text(_HARNESS, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        start = time.monotonic()
        with open(root / "stdout.txt", "wb") as out, open(root / "stderr.txt", "wb") as err:
            files = [str(root / f) for f in ("_harness.py", "result.json", "solution.py", "tests.py")]
            proc = subprocess.Popen(
                [python, "-I", *files], cwd=tmp, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                preexec_fn=_limits(memory_limit_mb << 20, int(time_limit_s) + 1, 8 << 20))
            timed_out = False
            try:
                proc.wait(timeout=time_limit_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:  # the whole group: children the code started (or left behind) go too
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        duration = time.monotonic() - start
        # RLIMIT_CPU sends SIGXCPU/SIGKILL: a CPU-bound loop can hit it just before the wall-clock limit.
        timed_out = timed_out or proc.returncode == -signal.SIGXCPU
        stdout = _tail(root / "stdout.txt", output_limit_bytes)
        stderr = _tail(root / "stderr.txt", output_limit_bytes)
        try:
            report = json.loads((root / "result.json").read_text())
        except (OSError, ValueError):
            report = None
    if report is None or timed_out:
        memory = "MemoryError" in stderr or bool(report and report["memory_exceeded"])
        error = ("timed out after %.1f s" % time_limit_s if timed_out
                 else "memory limit exceeded" if memory
                 else f"exited with code {proc.returncode} before reporting" + (
                     " (output limit)" if proc.returncode == -signal.SIGXFSZ else ""))
        return CodeResult(False, None, None, timed_out, memory, proc.returncode, error, stdout, stderr, duration)
    run, failed = report["tests_run"], report["tests_failed"]
    error = report["error"] or (None if run else "no tests found in the test code")
    passed = report["completed"] and run > 0 and failed == 0 and proc.returncode == 0
    return CodeResult(passed, run, failed, False, report["memory_exceeded"], proc.returncode, error, stdout,
                      stderr, duration)
