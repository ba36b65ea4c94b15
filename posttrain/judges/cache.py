"""The judges' answer cache: ``generation/answer_cache.py``'s ``AnswerCache`` (SQLite, one committed row per answer,
so a rerun or a crash costs nothing already paid for) in the judges' own file, ``default_cache_path()``.

The cache moved down to ``generation`` so that the ``openai`` generation backend shares it without importing
``judges`` (a layer below it); these names stay importable from here.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.generation.answer_cache import AnswerCache, cache_key
from posttrain.models.builtin import cache_root


def default_cache_path() -> Path:
    """``$POSTTRAIN_CACHE/judge_cache.sqlite`` (default ``~/.cache/posttrain``)."""
    return cache_root() / "judge_cache.sqlite"


__all__ = ["AnswerCache", "cache_key", "default_cache_path"]
