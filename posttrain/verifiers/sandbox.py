"""Where the code verifier's two processes run: a bubblewrap sandbox, or (explicitly, with a warning) bare.

``bwrap`` mode (bubblewrap, Debian package ``bubblewrap``) gives each process its own user, pid, network, IPC and
UTS namespaces: no network at all (an empty loopback of its own), a read-only view of only ``/usr`` and the
interpreter's own folders (its prefix and venv; no ``/etc``, ``/home``, ``/proc``, nor the rest of ``/root`` or
the project), a private 64 MiB ``/tmp``, no capabilities, no further user namespaces, and a seccomp filter that
refuses to create processes (``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD``; threads still work), so a
fork bomb cannot spend the machine's pids. When the process ends its pid namespace ends with it, and
``--die-with-parent`` ends the namespace when the supervisor kills bwrap, so nothing it started outlives the
verdict. Memory, CPU time and file size are capped with rlimits (RLIMIT_NPROC would not bind: the sandboxed user
maps to the caller, and root is exempt; hence the seccomp filter).

Where user namespaces are refused (root in a container without them), the sandbox runs without one: the same
namespaces otherwise, every capability dropped. Both flag sets are probed once per process.

``unsafe`` mode runs the same processes directly, limited only by rlimits and a process group: enough against
honest mistakes, not against code written to escape (it can read the file system, reach the network through
``_socket`` or a subprocess, leave processes behind, and reach the tests process through /proc). ``auto`` uses
bwrap when it is installed and works here, else unsafe with a one-time warning. ``POSTTRAIN_CODE_SANDBOX`` sets
the default mode.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import signal
import struct
import subprocess
import sys
import warnings
from dataclasses import dataclass
from functools import lru_cache

MODES = ("auto", "bwrap", "unsafe")
ENV_VAR = "POSTTRAIN_CODE_SANDBOX"
TMP_BYTES = 64 << 20
SHM_BYTES = 16 << 20
# The sandboxed user: nobody (mapped to the caller's uid outside).
_USERNS = ("--unshare-user", "--uid", "65534", "--gid", "65534", "--disable-userns")
_COMMON = ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--cap-drop", "ALL")
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}


@dataclass(frozen=True)
class Sandbox:
    """``mode``: "bwrap" or "unsafe"; ``flags``: the namespace flags the probe accepted (bwrap only)."""

    mode: str
    flags: tuple[str, ...] = ()


class SandboxError(RuntimeError):
    """The requested sandbox cannot run here; the message says why and what to install or set."""


# seccomp BPF (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k) over struct seccomp_data (nr at 0, arch at 4,
# args[0] at 16). Syscall numbers per architecture; an unlisted architecture runs without the filter.
_ARCH = {"x86_64": (0xC000003E, {"clone": 56, "fork": 57, "vfork": 58, "clone3": 435}),
         "aarch64": (0xC00000B7, {"clone": 220, "clone3": 435})}
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO, _EPERM, _ENOSYS, _CLONE_THREAD = 0x7FFF0000, 0x00050000, 1, 38, 0x00010000


def no_new_processes_filter() -> bytes | None:
    """A seccomp program refusing new processes (EPERM) but not threads. ``clone3`` gets ENOSYS, so the C
    library falls back to ``clone``, whose flags the filter can read; other architectures' calling conventions
    (i386 or x32 on x86_64) are refused outright, since their syscall numbers differ."""
    arch = _ARCH.get(platform.machine())
    if arch is None:
        return None
    audit_arch, nr = arch
    prog: list[tuple] = [(_LD, 0, 0, 4), (_JEQ, "next", "eperm", audit_arch), (_LD, 0, 0, 0)]
    if platform.machine() == "x86_64":
        prog.append((_JGE, "eperm", "next", 0x40000000))  # the x32 ABI sets this bit
    prog.append((_JEQ, "enosys", "next", nr["clone3"]))
    prog += [(_JEQ, "eperm", "next", nr[name]) for name in ("fork", "vfork") if name in nr]
    prog += [(_JEQ, "next", "allow", nr["clone"]), (_LD, 0, 0, 16), (_JSET, "allow", "eperm", _CLONE_THREAD)]
    labels = {"allow": len(prog), "eperm": len(prog) + 1, "enosys": len(prog) + 2}
    prog += [(_RET, 0, 0, _ALLOW), (_RET, 0, 0, _ERRNO | _EPERM), (_RET, 0, 0, _ERRNO | _ENOSYS)]

    def offset(target, i):
        return 0 if target in (0, "next") else labels[target] - i - 1

    return b"".join(struct.pack("=HBBI", code, offset(jt, i), offset(jf, i), k)
                    for i, (code, jt, jf, k) in enumerate(prog))


@lru_cache(maxsize=None)
def python_paths(python: str) -> tuple[str, ...]:
    """The folders ``python`` needs read-only: its prefixes (a venv and the base interpreter) and the folder of
    the real executable, minus what ``/usr`` already holds."""
    out = subprocess.run([python, "-I", "-c", "import sys; print(sys.prefix, sys.base_prefix, sys.exec_prefix, "
                          "sys.base_exec_prefix, sep='\\n')"], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split("\n")
    paths = {os.path.realpath(p) for p in out if p} | {p for p in out if p}
    paths.add(os.path.dirname(os.path.realpath(python)))
    paths = sorted(p for p in paths if p != "/" and not (p + "/").startswith("/usr/"))
    return tuple(p for p in paths if not any(p.startswith(q + "/") for q in paths))  # nested ones come along


def command(sb: Sandbox, argv: list[str], *, python: str, files: dict[str, str], seccomp_fd: int | None) -> list[str]:
    """The argv that runs ``argv`` in ``sb``. ``files`` maps sandbox paths to host files bound read-only."""
    if sb.mode == "unsafe":
        return argv
    sized = "--size" in _bwrap_options()  # bwrap >= 0.8; older ones get unbounded tmpfs (still private)
    cmd = ["bwrap", *sb.flags, "--dev", "/dev", "--remount-ro", "/dev"]
    for dest, size in (("/dev/shm", SHM_BYTES), ("/tmp", TMP_BYTES)):  # before the binds: a venv may be in /tmp
        cmd += [*(["--size", str(size)] if sized else []), "--tmpfs", dest]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):  # merged-/usr symlinks, or real folders
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    for path in python_paths(python):
        cmd += ["--ro-bind", path, path]
    for dest, src in files.items():
        cmd += ["--ro-bind", src, dest]
    cmd += ["--remount-ro", "/", "--chdir", "/tmp"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    return [*cmd, "--", *argv]


def _seccomp_fd() -> int | None:
    """An fd holding the process filter, for ``--seccomp`` (the caller closes it); None where there is none."""
    program = no_new_processes_filter()
    if program is None:
        return None
    fd = os.memfd_create("posttrain-seccomp")
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int):
    def apply() -> None:  # runs in the child between fork and exec (of bwrap, or of python in unsafe mode)
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def spawn(sb: Sandbox, argv: list[str], *, python: str, files: dict[str, str], cwd: str, stdin, stdout, stderr,
          pass_fds: tuple[int, ...], memory_bytes: int, cpu_seconds: int, file_bytes: int) -> subprocess.Popen:
    """Start ``argv`` (a ``python`` command) in ``sb`` in a new session, with rlimits; ``cwd`` is used in unsafe
    mode only (bwrap starts in its private /tmp)."""
    fd = _seccomp_fd() if sb.mode == "bwrap" else None
    try:
        return subprocess.Popen(
            command(sb, argv, python=python, files=files, seccomp_fd=fd), cwd=cwd, env=ENV, stdin=stdin,
            stdout=stdout, stderr=stderr, start_new_session=True, pass_fds=pass_fds + ((fd,) if fd is not None else ()),
            preexec_fn=_limits(memory_bytes, cpu_seconds, file_bytes))
    finally:
        if fd is not None:
            os.close(fd)


def stop(proc: subprocess.Popen) -> int:
    """Kill ``proc``'s process group (bwrap's death takes its pid namespace along) and reap it; returns its exit
    code as Popen reports it (``signal_of`` reads bwrap's ``128 + signal``)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.wait()


def signal_of(sb: Sandbox, rc: int | None) -> int | None:
    """The signal that ended a process with exit code ``rc``, if one did (bwrap reports 128 + signal)."""
    if rc is None:
        return None
    if rc < 0:
        return -rc
    if sb.mode == "bwrap" and rc > 128:
        return rc - 128
    return None


def _probe(flags: tuple[str, ...], python: str) -> str | None:
    """None when the sandbox runs ``python`` here, else bwrap's complaint."""
    sb = Sandbox("bwrap", flags)
    fd = None
    try:
        fd = _seccomp_fd()
        cmd = command(sb, [python, "-I", "-c", "pass"], python=python, files={}, seccomp_fd=fd)
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=60,
                              pass_fds=(fd,) if fd is not None else ())
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    finally:
        if fd is not None:
            os.close(fd)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit code {done.returncode}")[-300:]


@lru_cache(maxsize=None)
def _bwrap_options() -> str:
    try:
        return subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@lru_cache(maxsize=None)
def _bwrap(python: str) -> Sandbox | str:
    """The first working bwrap flag set (with a user namespace, then without), or why none works."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    reasons = []
    userns = tuple(f for f in _USERNS if f != "--disable-userns" or f in _bwrap_options())  # bwrap >= 0.8
    for flags in (userns + _COMMON, _COMMON):
        reason = _probe(flags, python)
        if reason is None:
            return Sandbox("bwrap", flags)
        reasons.append(reason)
    return "bwrap does not run here: " + " / ".join(dict.fromkeys(reasons))


_warned = False


def resolve(mode: str | None = None, python: str = sys.executable) -> Sandbox:
    """The sandbox for ``mode`` (None: ``$POSTTRAIN_CODE_SANDBOX`` or "auto"). "bwrap" that cannot run raises
    ``SandboxError``; "auto" falls back to unsafe with a warning (once per process)."""
    global _warned
    mode = mode or os.environ.get(ENV_VAR) or "auto"
    if mode not in MODES:
        raise SandboxError(f"code sandbox must be one of {', '.join(MODES)} (from the verifier's settings or "
                           f"${ENV_VAR}); got {mode!r}")
    if mode == "unsafe":
        return Sandbox("unsafe")
    found = _bwrap(python)
    if isinstance(found, Sandbox):
        return found
    if mode == "bwrap":
        raise SandboxError(f"code sandbox 'bwrap' requested but {found}")
    if not _warned:
        _warned = True
        warnings.warn(f"running candidate code WITHOUT a sandbox ({found}); it can read files, reach the network "
                      f"and leave processes behind. Install bubblewrap, or set {ENV_VAR}=unsafe to accept this.",
                      RuntimeWarning, stacklevel=3)
    return Sandbox("unsafe")
