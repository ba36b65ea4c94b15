"""Run a response's Python code against unit tests, so that the code can neither decide its own verdict nor escape.

Two processes: the *candidate* (``code_candidate.py``) runs the response's code; the *tests* process
(``code_tests.py``) runs the test code, reaching the candidate's functions and objects only through a pipe that
carries plain data (``code_wire.py``), and writes the verdict to an unnamed file only it holds. Code can rewrite
anything in its own process, so the verdict never comes from the process that runs it: writing a fake result
file, patching ``json.dump``, the harness, ``unittest`` or ``__eq__``, or exiting early all end as a failed run.
The supervisor (this module) accepts a verdict only when the tests process exited cleanly after running every
top-level test statement the supervisor parsed itself, with the candidate alive to the end.

Each process runs in a bubblewrap sandbox when one is available (``sandbox.py``: no network, a read-only view of
only the interpreter, a private /tmp, no new processes, its pid namespace killed with the verdict);
``sandbox="unsafe"`` (or ``auto`` without bwrap, with a warning) runs them bare, which stops honest mistakes only:
there the code can reach the tests process through /proc and the machine through the network and file system.

Test code may be plain top-level statements (``assert f(1) == 2``, or HumanEval's ``check(f)``), pytest-style
``def test_*()`` functions, or ``unittest.TestCase`` classes. What a test can do with the candidate's objects is
in ``code_tests.py``'s docstring (calls, attributes, items, iteration, conversions; not comparing or arithmetic
between a candidate object and a test value).
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain.verifiers.code_wire import planned_tests
from posttrain.verifiers.sandbox import resolve, signal_of, spawn, stop

HERE = Path(__file__).parent
SCRIPTS = ("code_wire.py", "code_candidate.py", "code_tests.py")  # what the two processes run (stdlib only)
STARTUP_S = 1.0  # wall-clock allowance for starting the two (sandboxed) interpreters, on top of the time limit
OUTPUT_FILE_BYTES = 8 << 20


@dataclass
class CodeResult:
    """``passed``: the tests ran to the end, at least one ran and none failed. ``tests_run``/``tests_failed``
    are None when the run ended early (timeout, the candidate's process crashed or exited, output limit).
    ``returncode``: the candidate process's exit code (negative: the signal that ended it), None if it was
    still running when the verdict came."""

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


def _tail(fh, limit: int) -> str:
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - limit))
    return fh.read().decode("utf-8", errors="replace")


def _source_file(text: str):
    """An unnamed file holding ``text``, handed to a process as stdin: nothing else can find it by name."""
    fh = tempfile.TemporaryFile()
    fh.write(text.encode("utf-8"))
    fh.seek(0)
    return fh


def run_python_tests(code: str, tests: str, *, time_limit_s: float = 5.0, memory_limit_mb: int = 512,
                     output_limit_bytes: int = 4096, python: str = sys.executable,
                     sandbox: str | None = None) -> CodeResult:
    """Run ``code`` and then ``tests`` against it; see the module doc. ``time_limit_s`` bounds the wall clock
    (plus ``STARTUP_S``) and each process's CPU time; ``memory_limit_mb`` each process's address space.
    stdout/stderr (both processes) go to files capped at 8 MiB (writing more kills the writer) and come back as
    their last ``output_limit_bytes``. ``sandbox``: "auto" | "bwrap" | "unsafe" (default:
    ``$POSTTRAIN_CODE_SANDBOX`` or "auto"); "bwrap" raises ``SandboxError`` where bubblewrap cannot run."""
    sb = resolve(sandbox, python)
    try:
        plan = planned_tests(ast.parse(tests, "tests.py"))
    except (SyntaxError, ValueError):
        plan = None  # the tests process reports the error
    where = "/verify" if sb.mode == "bwrap" else str(HERE)
    files = {f"/verify/{name}": str(HERE / name) for name in SCRIPTS} if sb.mode == "bwrap" else {}
    limits = {"memory_bytes": memory_limit_mb << 20, "cpu_seconds": int(time_limit_s) + 1,
              "file_bytes": OUTPUT_FILE_BYTES}
    with tempfile.TemporaryDirectory(prefix="posttrain-verify-") as tmp, \
            _source_file(code) as code_in, _source_file(tests) as tests_in, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as verdict:
        for name in ("candidate", "tests"):  # unsafe mode's working folders (bwrap starts in its private /tmp)
            os.mkdir(os.path.join(tmp, name))
        to_candidate, to_tests = os.pipe(), os.pipe()
        start = time.monotonic()
        procs = []
        try:
            procs.append(spawn(sb, [python, "-I", f"{where}/code_candidate.py", str(to_candidate[0]), str(to_tests[1])],
                               python=python, files=files, cwd=os.path.join(tmp, "candidate"), stdin=code_in,
                               stdout=out, stderr=err, pass_fds=(to_candidate[0], to_tests[1]), **limits))
            procs.append(spawn(sb, [python, "-I", f"{where}/code_tests.py", str(to_tests[0]), str(to_candidate[1]),
                                    str(verdict.fileno())],
                               python=python, files=files, cwd=os.path.join(tmp, "tests"), stdin=tests_in,
                               stdout=out, stderr=err, pass_fds=(to_tests[0], to_candidate[1], verdict.fileno()),
                               **limits))
        except BaseException:
            for proc in procs:
                stop(proc)
            raise
        finally:
            for fd in (*to_candidate, *to_tests):  # only the two processes hold the channel
                os.close(fd)
        candidate, tester = procs
        timed_out = False
        try:
            tester.wait(timeout=time_limit_s + STARTUP_S)
        except subprocess.TimeoutExpired:
            timed_out = True
        candidate_rc = None
        if not timed_out:
            try:  # told "bye" (or already dead): its exit code says which
                candidate_rc = candidate.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        stop(candidate)
        tests_rc = stop(tester)
        duration = time.monotonic() - start
        stdout, stderr = _tail(out, output_limit_bytes), _tail(err, output_limit_bytes)
        verdict.seek(0)
        try:
            report = json.loads(verdict.read().decode("utf-8"))
        except ValueError:
            report = None
    return _result(sb, report, plan, timed_out, candidate_rc, tests_rc, time_limit_s, stdout, stderr, duration)


def _result(sb, report, plan, timed_out, candidate_rc, tests_rc, time_limit_s, stdout, stderr, duration):
    """The verdict: a pass needs a complete report from a tests process that exited cleanly and ran exactly the
    test statements the supervisor parsed."""
    # RLIMIT_CPU sends SIGXCPU/SIGKILL: a CPU-bound loop can hit it just before the wall-clock limit.
    timed_out = timed_out or signal.SIGXCPU in (signal_of(sb, candidate_rc), signal_of(sb, tests_rc))
    sig = signal_of(sb, candidate_rc)
    shown_rc = -sig if sig else candidate_rc
    if timed_out or report is None or report.get("candidate_gone"):
        memory = "MemoryError" in stderr or bool(report and report.get("memory_exceeded"))
        if timed_out:
            error = "timed out after %.1f s" % time_limit_s
        elif memory:
            error = "memory limit exceeded"
        elif report is None:
            error = f"the tests process exited with code {tests_rc} without a verdict" + (
                " (output limit)" if signal_of(sb, tests_rc) == signal.SIGXFSZ else "")
        else:
            error = f"exited with code {shown_rc} before reporting" + (
                " (output limit)" if sig == signal.SIGXFSZ else "")
        return CodeResult(False, None, None, timed_out, memory, shown_rc, error, stdout, stderr, duration)
    run, failed = report["tests_run"], report["tests_failed"]
    error = report["error"] or (None if run else "no tests found in the test code")
    passed = bool(report["completed"]) and run > 0 and failed == 0 and tests_rc == 0
    if report["completed"] and report["statements"] != plan:
        passed, error = False, "the verdict does not cover the test statements (supervisor check)"
    return CodeResult(passed, run, failed, False, bool(report["memory_exceeded"]), shown_rc, error, stdout,
                      stderr, duration)
