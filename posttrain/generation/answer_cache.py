"""An on-disk cache of answers from an OpenAI-compatible endpoint (SQLite, WAL mode), so that a rerun or a crash
costs nothing already paid for. Used by the LLM judge (``judges/cache.py`` names its file) and the ``openai``
generation backend.

The key is the sha256 of everything that determines an answer: the endpoint, the model, the full messages and the
sampling parameters (a candidate's seed included). Each answer is committed the moment it arrives, so a run killed
halfway keeps every answer it got. One connection is shared by the threads of a process behind a lock (an SQLite
call takes microseconds, an HTTP call takes seconds); WAL lets other processes read while one writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT NOT NULL, meta TEXT NOT NULL, " \
          "created REAL NOT NULL)"


def cache_key(base_url: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    blob = json.dumps({"base_url": base_url.rstrip("/"), "model": model, "messages": messages, "params": params},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerCache:
    """``get(key) -> (text, meta) | None`` and ``put(key, text, meta)``; safe to share between threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, each put is durable on return.
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.execute(_SCHEMA)

    def get(self, key: str) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            row = self._conn.execute("SELECT text, meta FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def put(self, key: str, text: str, meta: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO answers (key, text, meta, created) VALUES (?, ?, ?, ?)",
                               (key, text, json.dumps(meta or {}, default=str), time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
