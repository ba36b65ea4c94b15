"""The wire between the code verifier's two processes (``code_candidate.py``, ``code_tests.py``): framed JSON
messages over pipes, and the plain-data encoding of values. Standard library only: it runs inside the
sandbox, without posttrain, and is imported by the supervisor (``code.py``) too.

A value crosses as plain data (None, bool, int, float, complex, str, bytes, numeric numpy arrays, and lists,
tuples, dicts, sets, frozensets, bytearrays of them) or, when it is anything else, as a handle naming an object
that stays in the process that owns it. The reading side checks every node's exact type, so a candidate can
send wrong values but never an object with behaviour of its own. JSON rather than marshal: the tests process
parses what the candidate sends, and marshal is documented as unsafe on crafted input.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import struct
import traceback

MAX_MESSAGE = 64 << 20
MAX_DEPTH = 64
SCALARS = (type(None), bool, int, float, str)  # JSON's own (ints of up to BIG_INT_BITS)
BIG_INT_BITS = 12000  # past Python's 4300-digit int/str limit: sent as hex
# Made once: faster than json.dumps with options, and code that patches the json module later keeps its hands off.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_DECODE = json.JSONDecoder().decode
MUTABLE = (list, dict, set, bytearray)
BINOPS = ("eq", "ne", "lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow",
          "and_", "or_", "xor", "matmul", "lshift", "rshift")
# Top-level test statements of these kinds set up later tests; any other statement is one test.
SETUP = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign,
         ast.AnnAssign, ast.AugAssign, ast.Pass)


def planned_tests(tree: ast.Module) -> list[int]:
    """Line numbers of the top-level statements that are tests (the supervisor checks the verdict against this)."""
    return [node.lineno for node in tree.body if not (isinstance(node, SETUP) or (
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)))]


class CandidateGone(BaseException):
    """The candidate process ended or broke the protocol: the run cannot go on (a BaseException, so test code's
    ``except Exception`` does not swallow it)."""


class Channel:
    """Length-prefixed JSON messages (lists) over a pair of pipe fds."""

    def __init__(self, rfd: int, wfd: int):
        self.rfd, self.wfd, self.gone = rfd, wfd, False

    def send(self, msg) -> None:
        data = _ENCODE(msg).encode("ascii")
        view = memoryview(struct.pack(">I", len(data)) + data)
        try:
            while view:
                view = view[os.write(self.wfd, view):]
        except OSError:
            self.gone = True
            raise CandidateGone("the other process closed the channel") from None

    def _read(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = os.read(self.rfd, min(n, 1 << 20))
            if not chunk:
                self.gone = True
                raise CandidateGone("the other process closed the channel")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv(self) -> list:
        if self.gone:
            raise CandidateGone("the other process closed the channel")
        (size,) = struct.unpack(">I", self._read(4))
        if size > MAX_MESSAGE:
            self.gone = True
            raise CandidateGone(f"message of {size} bytes is over the limit")
        try:
            msg = _DECODE(self._read(size).decode("ascii"))
        except (ValueError, RecursionError):
            msg = None
        if type(msg) is not list or not msg or type(msg[0]) is not str:
            self.gone = True
            raise CandidateGone("unreadable message")
        return msg


_TAGS = ((list, "l"), (tuple, "t"), (dict, "d"), (set, "s"), (frozenset, "f"), (bytearray, "b"),
         (int, None), (float, None), (complex, None), (str, None), (bytes, None))
_IMMUTABLE = (tuple, frozenset, int, float, complex, str, bytes)
_HEX = re.compile(r"-?[0-9a-f]+")


def _wrapper(base: type) -> type:
    """In the tests process, a candidate's subclass of ``base`` (namedtuple, IntEnum, Counter, numpy float):
    ``base``'s own value and operators, other attributes read from the candidate's object."""
    def __getattr__(self, name):
        handle = self.__dict__.get("_handle")
        if handle is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(handle, name)
    return type(f"Candidate{base.__name__.capitalize()}", (base,), {"__getattr__": __getattr__})


WRAPPERS = {base: _wrapper(base) for base, _ in _TAGS}


def _plain_scalar(x):
    """An exact int, float, complex, str or bytes as a JSON node."""
    if type(x) is int and x.bit_length() > BIG_INT_BITS:
        return ["i", format(x, "x")]
    if type(x) is complex:
        return ["j", x.real, x.imag]
    if type(x) is bytes:
        return ["y", base64.b64encode(x).decode("ascii")]
    return x


def encode(x, export, depth: int = 0):
    """``x`` as JSON-able plain data: None, bool, int, float and str as themselves, everything else as a list
    [tag, ...]: containers as [tag, items], numeric numpy arrays as ["n", dtype, shape, base64], anything else as
    ``export(x)`` (a handle). A subclass of a plain type (namedtuple, IntEnum, Counter) is ["x", its plain value,
    handle]."""
    t = type(x)
    if t in SCALARS or t is complex or t is bytes:
        return _plain_scalar(x)
    if depth >= MAX_DEPTH:
        return export(x)
    if t in WRAPPERS.values():  # a candidate value coming back: immutable ones as the candidate's own object
        handle = x.__dict__.get("_handle")
        if handle is not None and isinstance(x, _IMMUTABLE):
            return export(handle)
    for base, tag in _TAGS:
        if isinstance(x, base):
            if tag is None:
                plain = _plain_scalar(base(x))
            elif tag == "b":
                plain = ["b", base64.b64encode(bytes(x)).decode("ascii")]
            else:
                items = [v for kv in x.items() for v in kv] if tag == "d" else list(x)
                plain = [tag, [encode(v, export, depth + 1) for v in items]]
            return plain if t is base or t in WRAPPERS.values() else ["x", plain, export(x)]
    if t.__module__ == "numpy" and hasattr(x, "dtype") and hasattr(x, "tobytes"):
        if getattr(x, "shape", None) == ():
            return encode(x.item(), export, depth + 1)
        if x.dtype.kind in "biufc":
            return ["n", x.dtype.str, list(x.shape), base64.b64encode(x.tobytes()).decode("ascii")]
    return export(x)


def _b64(text) -> bytes:
    if type(text) is not str:
        raise ValueError
    return base64.b64decode(text, validate=True)


def decode(node, resolve, depth: int = 0):
    """The value of an ``encode``d node, checked strictly (the tests process reads untrusted data with it);
    ``resolve(node)`` turns a handle node into an object. Malformed data raises CandidateGone."""
    if type(node) in SCALARS:
        return node
    try:
        if type(node) is not list or depth > MAX_DEPTH + 1 or type(node[0]) is not str:
            raise ValueError
        tag, n = node[0], len(node)
        if tag in ("l", "t", "s", "f", "d") and n == 2 and type(node[1]) is list:
            items = [decode(v, resolve, depth + 1) for v in node[1]]
            if tag == "d":
                if len(items) % 2:
                    raise ValueError
                return dict(zip(items[::2], items[1::2]))
            return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](items)
        if tag == "i" and n == 2 and type(node[1]) is str and _HEX.fullmatch(node[1]):
            return int(node[1], 16)
        if tag == "j" and n == 3 and all(type(v) in (int, float) for v in node[1:]):
            return complex(node[1], node[2])
        if tag in ("y", "b") and n == 2:
            return (bytes if tag == "y" else bytearray)(_b64(node[1]))
        if tag == "n" and n == 4 and type(node[1]) is str and type(node[2]) is list:
            import numpy  # not a dependency of these stdlib-only processes: only an array on the wire needs it

            dtype = numpy.dtype(node[1])
            if dtype.kind not in "biufc" or not all(type(d) is int and d >= 0 for d in node[2]):
                raise ValueError
            return numpy.frombuffer(_b64(node[3]), dtype=dtype).reshape(node[2]).copy()
        if tag in ("h", "c"):
            return resolve(node)
        if tag == "x" and n == 3:
            value, handle = decode(node[1], resolve, depth + 1), decode(node[2], resolve, depth + 1)
            wrapped = WRAPPERS[type(value)](value)
            wrapped.__dict__["_handle"] = handle
            return wrapped
    except CandidateGone:
        raise
    except Exception:  # noqa: BLE001 - whatever a malformed node breaks, the answer is the same
        pass
    raise CandidateGone("malformed value from the other process")


def describe(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()[-500:]


def error_message(e: BaseException) -> list:
    try:
        text = str(e)[:500]
    except BaseException:  # noqa: BLE001 - candidate exceptions may break even str()
        text = ""
    return ["err", type(e).__name__, text, isinstance(e, MemoryError)]
