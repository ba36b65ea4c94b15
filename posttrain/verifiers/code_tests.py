"""The tests process of a code verification (see ``code.py``): runs the test code and writes the verdict. Run as
``python -I code_tests.py READ_FD WRITE_FD VERDICT_FD`` with the test code on stdin; standard library only.

Why two processes: code can rewrite anything in the process it runs in (the harness and its report, ``unittest``,
``math.isclose``, ``json.dump``), so the process that decides the verdict never runs candidate code. The tests
see the candidate's top-level names as proxies (``Handle``): a call sends its arguments over a pipe, the
candidate process runs it and sends back plain data (None, bool, int, float, complex, str, bytes, numeric numpy
arrays, and lists, tuples, dicts, sets of them) or a handle to any other object. What the candidate controls is
data, judged by test code it cannot reach:

- a candidate object never equals, orders against or does arithmetic with a test value (``==`` is False,
  ``<`` and ``+`` raise TypeError): that would show it the expected value (the "always equal" object).
  ``x in obj`` iterates ``obj`` and compares here. Between two candidate objects, the candidate answers;
- conversions (``len``, ``bool``, ``str``, ``float``, ``int``, iteration), attributes, items and calls are
  answered by the candidate, as plain values that Python's own protocol checks type;
- callables from the tests (``key=lambda ...``) can be passed to the candidate, which can only call them;
- lists, dicts, sets and bytearrays passed to a call are updated in place when the call changed them;
- candidate names that shadow builtins are not injected; modules it imported are imported afresh here.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import os
import sys
import types
import unittest

# -I leaves the script's folder off sys.path (3.11+); it goes (back) off after the import, so that the folder's
# other modules (code.py, math.py) cannot shadow the standard library's for the code under test.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from code_wire import (BINOPS, MUTABLE, WRAPPERS, CandidateGone, Channel, decode, describe,  # noqa: E402
                       encode, error_message, planned_tests)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _HERE]


class CandidateError(Exception):
    """An exception from candidate code whose type is not a builtin Exception."""


_chan: Channel | None = None
_handles: dict[int, Handle] = {}
_callbacks: list = []


def _export(x):
    if isinstance(x, Handle):
        return ["h", x._hid]
    if callable(x):
        _callbacks.append(x)
        return ["c", len(_callbacks) - 1]
    raise TypeError(f"cannot pass a {type(x).__name__} to the candidate's code: only plain data, callables and "
                    "objects the candidate made")


def _resolve(node):
    if node[0] == "h" and len(node) == 3 and type(node[1]) is int and type(node[2]) is str:
        if node[1] not in _handles:
            _handles[node[1]] = Handle(node[1], node[2])
        return _handles[node[1]]
    if node[0] == "c" and len(node) == 2 and type(node[1]) is int and 0 <= node[1] < len(_callbacks):
        return _callbacks[node[1]]
    raise ValueError


def _raise_from(reply) -> None:
    _, name, text, memory = reply
    if memory:
        raise MemoryError(text)
    cls = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(text)
        except Exception:  # noqa: BLE001 - builtins such as UnicodeDecodeError need more arguments
            exc = CandidateError(f"{name}: {text}")
        raise exc
    raise CandidateError(f"{name}: {text}")


def _remote(kind: str, handle: Handle, *args, call=None):
    """Ask the candidate process to do ``kind`` on ``handle``; serves the callbacks it makes meanwhile."""
    if call is not None:
        pos, kw = call
        args = [[encode(v, _export) for v in pos], [[k, encode(v, _export)] for k, v in kw.items()]]
        msg = ["op", kind, handle._hid, args]
    else:
        msg = ["op", kind, handle._hid, [encode(a, _export) for a in args]]
    _chan.send(msg)
    while True:
        reply = _chan.recv()
        if reply[0] == "ok" and len(reply) == 3 and type(reply[2]) is list:
            if call is not None:
                _write_back(call, reply[2])
            return decode(reply[1], _resolve)
        if reply[0] == "err" and len(reply) == 4:
            _raise_from(reply)
        if reply[0] == "cb" and len(reply) == 4 and type(reply[1]) is int and 0 <= reply[1] < len(_callbacks):
            try:
                pos = [decode(v, _resolve) for v in reply[2]]
                kw = {k: decode(v, _resolve) for k, v in reply[3] if type(k) is str}
                out = ["ok", encode(_callbacks[reply[1]](*pos, **kw), _export), []]
            except CandidateGone:
                raise
            except Exception as e:  # noqa: BLE001 - the test callable's error goes back to the candidate
                out = error_message(e)
            _chan.send(out)
            continue
        raise CandidateGone("malformed message from the candidate")


def _write_back(call, writeback) -> None:
    """Copy the candidate's changes to the lists, dicts, sets and bytearrays the tests passed, in place."""
    pos, kw = call
    for entry in writeback:
        if type(entry) is not list or len(entry) != 2:
            raise CandidateGone("malformed message from the candidate")
        key, node = entry
        original = pos[key] if type(key) is int and 0 <= key < len(pos) else kw.get(key) if type(key) is str else None
        if type(original) not in MUTABLE:
            continue
        new = decode(node, _resolve)
        if type(new) is not type(original) or new == original:
            continue
        if isinstance(original, (list, bytearray)):
            original[:] = new
        else:
            original.clear()
            original.update(new)


def _binop(name):
    def method(self, other):
        return _remote("binop", self, name, other) if isinstance(other, Handle) else NotImplemented
    return method


class Handle:
    """An object living in the candidate process; see the module docstring for what it answers."""

    __slots__ = ("_hid", "_type", "__weakref__")

    def __init__(self, hid: int, type_name: str):
        object.__setattr__(self, "_hid", hid)
        object.__setattr__(self, "_type", type_name)

    def __getattr__(self, name):
        return _remote("getattr", self, name)

    def __setattr__(self, name, value):
        _remote("setattr", self, name, value)

    def __delattr__(self, name):
        _remote("delattr", self, name)

    def __call__(self, *args, **kwargs):
        return _remote("call", self, call=(args, kwargs))

    def __getitem__(self, key):
        return _remote("getitem", self, key)

    def __setitem__(self, key, value):
        _remote("setitem", self, key, value)

    def __delitem__(self, key):
        _remote("delitem", self, key)

    def __contains__(self, item):
        return any(x is item or x == item for x in self)

    def __repr__(self):
        try:
            return _remote("repr", self)
        except Exception:  # noqa: BLE001 - error messages must still render
            return f"<candidate {self._type} object>"

    def __iter__(self):
        return _remote("iter", self)

    def __ne__(self, other):
        return _remote("binop", self, "ne", other) if isinstance(other, Handle) else NotImplemented

    def __instancecheck__(self, instance):  # isinstance(obj, CandidateClass): asked only about candidate objects
        if type(instance) in WRAPPERS.values():
            instance = instance.__dict__.get("_handle")
        return isinstance(instance, Handle) and _remote("isinstance", instance, self) is True


for _name in ("len", "bool", "str", "float", "int", "index", "hash", "next"):
    setattr(Handle, f"__{_name}__", (lambda kind: lambda self: _remote(kind, self))(_name))
for _name in BINOPS:
    if _name != "ne":
        setattr(Handle, f"__{_name.rstrip('_')}__", _binop(_name))


def _namespace(names) -> dict:
    """The tests' globals: the candidate's top-level names (handles or plain copies), except builtins' names."""
    ns = {"__name__": "tests", "__builtins__": builtins}
    if type(names) is not list:
        raise CandidateGone("malformed names from the candidate")
    for entry in names:
        if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not str:
            raise CandidateGone("malformed names from the candidate")
        name, node = entry
        if hasattr(builtins, name):
            continue
        if type(node) is list and len(node) == 2 and node[0] == "m" and type(node[1]) is str:
            top = node[1].partition(".")[0]
            if top in sys.stdlib_module_names and top not in ("antigravity", "this") or top == "numpy":
                try:
                    ns[name] = importlib.import_module(node[1])
                except Exception:  # noqa: BLE001 - a module the tests cannot import is simply not there
                    pass
            continue
        ns[name] = decode(node, _resolve)
    return ns


def run_tests(source: str) -> dict:
    report = {"tests_run": 0, "tests_failed": 0, "completed": False, "memory_exceeded": False, "error": None,
              "candidate_gone": False, "statements": []}

    def failed(e, where):
        report["tests_failed"] += 1
        if report["error"] is None:
            report["error"] = where + ": " + describe(e)

    def check(fn, where):
        report["tests_run"] += 1
        try:
            fn()
        except (MemoryError, KeyboardInterrupt, SystemExit, CandidateGone):
            raise
        except BaseException as e:  # noqa: BLE001 - any other failure of a test is that test's failure
            failed(e, where)

    try:
        tree = ast.parse(source, "tests.py")
        first = _chan.recv()
        if len(first) == 3 and first[0] == "load_error":
            report["error"], report["memory_exceeded"] = str(first[1])[-500:], first[2] is True
            return report
        if len(first) != 2 or first[0] != "hello":
            raise CandidateGone("malformed greeting from the candidate")
        ns = _namespace(first[1])
        tests = set(planned_tests(tree))
        for node in tree.body:
            code = compile(ast.Module([node], type_ignores=[]), "tests.py", "exec")
            if node.lineno not in tests:
                exec(code, ns)
                continue
            report["statements"].append(node.lineno)
            check(lambda: exec(code, ns), f"tests.py line {node.lineno}")
        for name, fn in list(ns.items()):
            if name.startswith("test") and isinstance(fn, types.FunctionType) and fn.__code__.co_filename == "tests.py":
                check(fn, name)
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
        if _chan.gone:  # unittest records any exception as an error, CandidateGone included
            raise CandidateGone("the candidate process ended during the tests")
        report["completed"] = True
    except CandidateGone:
        report["candidate_gone"] = True
    except MemoryError:
        report["memory_exceeded"], report["error"] = True, "MemoryError"
    except BaseException as e:  # noqa: BLE001 - a broken setup statement or test file ends the run
        report["error"] = describe(e)
    return report


def tests(rfd: int, wfd: int, verdict_fd: int) -> None:
    global _chan
    source = sys.stdin.read()
    _chan = Channel(rfd, wfd)
    report = run_tests(source)
    sys.stdout.flush(), sys.stderr.flush()
    data = (json.dumps(report) + "\n").encode()
    while data:
        data = data[os.write(verdict_fd, data):]
    os.set_blocking(wfd, False)  # a candidate that stopped reading cannot hold the verdict back
    try:
        _chan.send(["bye"])
    except CandidateGone:
        pass


if __name__ == "__main__":
    tests(*map(int, sys.argv[1:4]))
