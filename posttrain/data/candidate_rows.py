"""The one reader of candidate rows (``posttrain generate``'s output, docs/CANDIDATES.md), shared by the
``judge`` stage and constraint augmentation (``data/augment.py``).

A row: ``prompt_id`` (str), ``candidate_index`` (int), ``prompt`` (non-empty list of {role, content} messages),
``text`` (str), optional ``metadata`` (object); the other keys ``generate`` writes (``finish_reason``,
``sampling``, ``model``, token counts) are kept as they are. Every bad row is a ``DataError`` naming the file,
line and field, all of them reported at once; a (prompt_id, candidate_index) that repeats is an error too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.data.readers import utf8_lines
from posttrain.data.schema import DataError, DataErrors


def read_candidate_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """(rows, their 1-based line numbers); ``DataError`` (one bad row) or ``DataErrors`` (several)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), None, None, "no such file")
    rows, lines, errors, seen = [], [], [], set()
    # BOM dropped, a non-UTF-8 line reported by line number (and the other lines still checked)
    for n, line in utf8_lines(str(path), path, errors):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            errors.append(DataError(str(path), n, None, f"not valid JSON ({e.msg})"))
            continue
        err = check_candidate_row(row)
        if err:
            errors.append(DataError(str(path), n, err[0], err[1]))
            continue
        if (row["prompt_id"], row["candidate_index"]) in seen:
            errors.append(DataError(str(path), n, "candidate_index",
                                    f"repeats candidate {row['candidate_index']} of prompt '{row['prompt_id']}'"))
        seen.add((row["prompt_id"], row["candidate_index"]))
        rows.append(row)
        lines.append(n)
    if errors:
        raise errors[0] if len(errors) == 1 else DataErrors(errors)
    if not rows:
        raise DataError(str(path), None, None, "no candidate rows")
    return rows, lines


def check_candidate_row(row: Any) -> tuple[str | None, str] | None:
    """(field, problem) of the first thing wrong with one parsed row, or None."""
    if not isinstance(row, dict):
        return None, "expected a JSON object"
    for key, kind in (("prompt_id", str), ("text", str), ("candidate_index", int)):
        if not isinstance(row.get(key), kind) or isinstance(row.get(key), bool):
            return key, f"missing or not a {kind.__name__}"
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        return "prompt", "must be a non-empty list of {role, content} messages"
    if not isinstance(row.get("metadata", {}), dict):
        return "metadata", "must be an object"
    return None
