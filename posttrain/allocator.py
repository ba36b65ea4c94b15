"""The memory allocator of the ``posttrain`` command: tcmalloc where it is installed, through one re-exec.

On CPU, glibc's malloc hands every freed block above its mmap threshold back to the kernel, so each training step
page-faults and zeroes its activations again: on 2 cores that was a third of a DPO step's CPU time in system calls
(2.6 million minor faults in 8 steps). With tcmalloc preloaded the same runs are 1.33x faster end to end (SFT and
DPO, process start included; generation 1.03x) and every loss is bit-identical (``bench/allocator.py``,
docs/PERFORMANCE.md). An allocator can only be chosen before the process starts, so the command's entry point
(``posttrain/launch.py``) calls :func:`preload` first thing: where a library is found and not yet loaded, it execs
the same command line again with ``LD_PRELOAD`` set. Imported as a library, posttrain changes nothing.

``POSTTRAIN_ALLOCATOR``: ``auto`` (default: tcmalloc if installed, else the system's), ``tcmalloc``, ``jemalloc``,
``system`` (no re-exec), or a path to a shared library. A named allocator that is not installed is a one-line error.
The re-executed process takes ``LD_PRELOAD`` back out of its environment, so the programs it starts (a browser, a
database server, an inference server) run with their own allocator; a ``posttrain`` child makes its own choice.
jemalloc is not the automatic choice: with its default settings it returned memory so eagerly that generation ran
0.89x (measured with the benchmark above).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "POSTTRAIN_ALLOCATOR"
# Set only across the one exec: the child takes it out at once (loop guard) and restores LD_PRELOAD from it.
_EXEC_MARK = "POSTTRAIN_ALLOCATOR_EXEC"
LIBRARIES = {"tcmalloc": ["libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"],
             "jemalloc": ["libjemalloc.so.2", "libjemalloc.so"]}
LIBDIRS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
           "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu"]
# tcmalloc prints a line for every allocation above this many bytes (default 1 GiB): a large vocabulary's logits.
_TCMALLOC_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 50)}


class AllocatorError(Exception):
    """``POSTTRAIN_ALLOCATOR`` names something that cannot be used."""


def find_library(name: str, dirs: list[str] | None = None) -> str | None:
    """The path of an installed allocator library (``tcmalloc`` / ``jemalloc``), or None."""
    for d in dirs if dirs is not None else LIBDIRS:
        for f in LIBRARIES[name]:
            if (Path(d) / f).is_file():
                return str(Path(d) / f)
    return None


def choose(setting: str | None, dirs: list[str] | None = None) -> str | None:
    """The library to preload for a ``POSTTRAIN_ALLOCATOR`` value, or None for the system's malloc."""
    value = (setting or "auto").strip()
    if value in ("", "auto"):
        return find_library("tcmalloc", dirs)
    if value == "system":
        return None
    if value in LIBRARIES:
        path = find_library(value, dirs)
        if path is None:
            pkg = "libtcmalloc-minimal4" if value == "tcmalloc" else "libjemalloc2"
            raise AllocatorError(f"{ENV}={value}: no {value} library in {', '.join(dirs or LIBDIRS)} (Debian/Ubuntu: "
                                 f"apt-get install {pkg}); set {ENV}=auto or system to run without it")
        return path
    if "/" in value:
        if not Path(value).is_file():
            raise AllocatorError(f"{ENV}={value}: no such file")
        return value
    raise AllocatorError(f"{ENV}={value!r}: expected auto, tcmalloc, jemalloc, system or a path to a shared library")


def loaded_allocator(maps: str = "/proc/self/maps") -> str | None:
    """The tcmalloc / jemalloc library mapped into this process (its path), or None (the system's malloc)."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        name = Path(fields[-1]).name if len(fields) >= 6 else ""
        if ".so" in name and ("tcmalloc" in name or "jemalloc" in name):
            return fields[-1]
    return None


def allocator_label() -> str:
    """What a run manifest records: ``tcmalloc (path)``, ``jemalloc (path)`` or ``system``."""
    path = loaded_allocator()
    if path is None:
        return "system"
    return ("jemalloc" if "jemalloc" in Path(path).name else "tcmalloc") + f" ({path})"


def preload(argv: list[str] | None = None, *, environ=None, execve=os.execve, dirs: list[str] | None = None,
            maps: str = "/proc/self/maps") -> None:
    """Re-exec this command with the chosen allocator preloaded; return where nothing is to be done.

    ``argv``: the interpreter's own command line after the interpreter (default ``sys.orig_argv[1:]``: the script
    and its arguments, ``-m`` and interpreter flags included). ``environ``, ``execve``, ``dirs`` (where libraries
    are looked for) and ``maps`` (this process's mappings) are for tests. An ``AllocatorError`` is raised for a bad
    ``POSTTRAIN_ALLOCATOR``; an exec that fails leaves the process as it was."""
    env = os.environ if environ is None else environ
    if _EXEC_MARK in env:  # the re-executed process: LD_PRELOAD back as it was, for whatever this one starts
        previous = env.pop(_EXEC_MARK)
        if previous:
            env["LD_PRELOAD"] = previous
        else:
            env.pop("LD_PRELOAD", None)
        return
    if not sys.platform.startswith("linux"):
        return
    library = choose(env.get(ENV), dirs)
    if library is None or loaded_allocator(maps) is not None:
        return
    args = list(sys.orig_argv[1:] if argv is None else argv)
    if not args:
        return
    child = dict(env)
    child[_EXEC_MARK] = env.get("LD_PRELOAD", "")
    child["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    if "tcmalloc" in Path(library).name:
        for key, value in _TCMALLOC_QUIET.items():
            child.setdefault(key, value)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        execve(sys.executable, [sys.executable, *args], child)
    except OSError:
        return
