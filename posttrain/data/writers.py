"""Atomic file writes: a temp name in the same folder, flushed to disk, then a rename, so a killed run (or a power
cut) never leaves a half-written file that looks finished. Every stage writes its outputs through these, and checks
its output location with ``check_output_path`` before loading a model.

JSON written here is strict: NaN and infinities become ``null`` (Python's ``json`` would write ``NaN`` /
``Infinity``, which no other JSON parser accepts)."""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Iterable


class OutputPathError(ValueError):
    """An output location that cannot be written; ``str()`` is one line naming the path."""


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk; some filesystems refuse to open or fsync a
    # folder, and then there is nothing more to do.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with mode 0o666 lets the kernel apply the process umask, as for any new file; reading the umask
    # with os.umask() would briefly set it process-wide, racing with files other threads create.
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes reach the disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def strict_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (they become null). The common case, with no such value,
    costs one ``dumps``."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, strict_json(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(strict_json(row, ensure_ascii=False) + "\n" for row in rows)


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, jsonl_text(rows))


def _nearest_existing(path: Path) -> Path:
    while True:
        try:
            if path.exists() or path.is_symlink() or path == path.parent:
                return path
        except OSError:  # e.g. a component that cannot be searched: treat it as the place to report
            return path
        path = path.parent


def check_output_path(path: str | os.PathLike, name: str, *, folder: bool = True) -> None:
    """Raise ``OutputPathError`` (one line naming ``name`` and the path) unless ``path`` can be written: a folder
    (``folder``) or a file that is or will be created there. Run before a model is loaded, so a typo costs nothing.

    Whether a folder is writable is found by trying (an unnamed temporary file, removed at once), not from
    permission bits: root ignores those, while a read-only mount or a pseudo-filesystem (/proc, /sys) stops even
    root."""
    p = Path(path).expanduser()
    kind = "folder" if folder else "file"
    existing = _nearest_existing(p)
    if existing == p:
        if folder and not p.is_dir():
            raise OutputPathError(f"{name} '{p}' is a file, not a folder")
        if not folder and p.is_dir():
            raise OutputPathError(f"{name} '{p}' is a folder, not a file")
        if not folder and not os.access(p, os.W_OK):
            raise OutputPathError(f"{name} '{p}': the file is not writable")
        probe = p if folder else p.parent
    else:
        if not existing.is_dir():
            raise OutputPathError(f"{name} '{p}': cannot create this {kind}: '{existing}' is a file, not a folder")
        probe = existing
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        where = "" if probe == p else f"in '{probe}' "
        raise OutputPathError(f"{name} '{p}': cannot write {where}({e.strerror or type(e).__name__})") from None
