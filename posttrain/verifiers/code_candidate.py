"""The candidate process of a code verification (see ``code.py``): runs the response's code, then answers the
tests process's requests (calls, attributes, items, conversions) over the wire. Nothing here is trusted: the
candidate's code can rewrite all of it, which only changes the data it sends. Run as
``python -I code_candidate.py READ_FD WRITE_FD`` with the code on stdin; standard library only.
"""

from __future__ import annotations

import builtins
import operator
import os
import socket
import sys

# -I leaves the script's folder off sys.path (3.11+); it goes (back) off after the import, so that the folder's
# other modules (code.py, math.py) cannot shadow the standard library's for the code under test.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from code_wire import MUTABLE, Channel, decode, describe, encode, error_message  # noqa: E402
sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _HERE]


def _no_network() -> None:
    """Honest code that tries the network gets a clear error; the sandbox is what actually stops the network."""
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled while verifying code")

    class NoNetworkSocket(socket.socket):  # a subclass, so modules that subclass socket.socket still import
        def __init__(self, *args, **kwargs):
            refuse()

    socket.socket = NoNetworkSocket
    socket.create_connection = socket.getaddrinfo = socket.socketpair = refuse


def candidate(rfd: int, wfd: int) -> None:
    source = sys.stdin.read()
    chan = Channel(rfd, wfd)
    objects: dict[int, object] = {}  # handle id -> object (kept alive, so ids are never reused)

    def export(x):
        objects[id(x)] = x
        return ["h", id(x), type(x).__name__]

    def resolve(node):
        if node[0] == "h":
            return objects[node[1]]
        return lambda *a, **kw: request(["cb", node[1], [encode(v, export) for v in a],
                                         [[k, encode(v, export)] for k, v in kw.items()]])

    def request(msg):
        chan.send(msg)
        while True:
            reply = chan.recv()
            if reply[0] == "ok":
                return decode(reply[1], resolve)
            if reply[0] == "err":  # a test callable raised: the same builtin type here, if it is one
                cls = getattr(builtins, str(reply[1]), None)
                raise (cls if isinstance(cls, type) and issubclass(cls, Exception) else RuntimeError)(reply[2])
            serve(reply)

    def serve(msg):
        if msg[0] == "bye":
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(0)
        try:
            kind, obj, args = msg[1], objects[msg[2]], msg[3]
            writeback = []
            if kind == "call":
                pos = [decode(v, resolve) for v in args[0]]
                kw = {k: decode(v, resolve) for k, v in args[1]}
                value = obj(*pos, **kw)
                writeback = [[k, encode(v, export)] for k, v in [*enumerate(pos), *kw.items()] if type(v) in MUTABLE]
            elif kind == "binop":
                value = getattr(operator, args[0])(obj, decode(args[1], resolve))
            elif kind == "isinstance":
                value = isinstance(obj, decode(args[0], resolve))
            elif kind in ("getattr", "delattr", "setattr"):
                value = getattr(builtins, kind)(obj, args[0], *[decode(v, resolve) for v in args[1:]])
            elif kind in ("getitem", "setitem", "delitem"):
                value = getattr(operator, kind)(obj, *[decode(v, resolve) for v in args])
            else:
                value = {"len": len, "bool": bool, "str": str, "repr": repr, "float": float, "int": int,
                         "index": operator.index, "hash": hash, "iter": iter, "next": next}[kind](obj)
            reply = ["ok", encode(value, export), writeback]
        except BaseException as e:  # noqa: BLE001 - everything the candidate raises goes back to the tests
            reply = error_message(e)
        sys.stdout.flush(), sys.stderr.flush()
        chan.send(reply)

    _no_network()
    sys.setrecursionlimit(10000)
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
        names = [[k, ["m", v.__name__] if type(v) is type(sys) else encode(v, export)]
                 for k, v in namespace.items() if not k.startswith("__")]
    except BaseException as e:  # noqa: BLE001 - a crash while loading is the verdict's business
        sys.stdout.flush(), sys.stderr.flush()
        chan.send(["load_error", describe(e), isinstance(e, MemoryError)])
        return
    sys.stdout.flush(), sys.stderr.flush()
    chan.send(["hello", names])
    while True:
        serve(chan.recv())


if __name__ == "__main__":
    candidate(*map(int, sys.argv[1:3]))
