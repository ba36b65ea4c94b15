"""Label tasks from the files posttrain already writes.

Side-by-side (``side_by_side_payloads``):

- a file of comparisons: ``{"prompt", "response_a", "response_b"}`` per row (prompt: a string or a message list;
  optional ``model_a`` / ``model_b``, ``metadata``), e.g. two models' answers to the same prompts;
- or ``posttrain generate``'s candidates: the first two candidates of each prompt (by ``candidate_index``) with
  different texts.

Audits (``audit_items``): a ``judge`` run's decisions, either its ``pairs.jsonl`` (each pair is "chosen beats
rejected" with its margin as the confidence) or its ``comparisons.jsonl`` with the candidates it judged (each
comparison's winner a / b / tie, and the judge's confidence where it gave one). Categories come from the prompt's
metadata when the candidates are given.

Every payload gets a display order drawn from ``random.Random(seed)`` in file order, so the same file and seed
give the same tasks. Bad rows are ``DataError``\\s naming the file, line and field, all reported at once.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from posttrain.data.candidate_rows import read_candidate_rows
from posttrain.data.readers import read_records
from posttrain.data.schema import DataError, DataErrors


def _prompt(value: Any, source: str, row: int) -> list[dict[str, str]]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if (isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                  and isinstance(m.get("content"), str) for m in value)):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(source, row, "prompt", "must be a non-empty string or a list of {role, content} messages")


def _text(record: dict, key: str, source: str, row: int) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(source, row, key, "missing" if value is None else "must be a non-empty string")
    return value


def category(metadata: dict[str, Any] | None) -> str:
    """A prompt's category: its metadata ``category``, else its constraint kinds (sorted, joined by +), else all."""
    metadata = metadata or {}
    if isinstance(metadata.get("category"), str) and metadata["category"]:
        return metadata["category"]
    kinds = [c.get("kind") for c in metadata.get("constraints") or [] if isinstance(c, dict)]
    if metadata.get("constraint"):
        kinds.append(metadata["constraint"])
    kinds = sorted({k for k in kinds if isinstance(k, str)})
    return "+".join(kinds) if kinds else "all"


def with_display(payloads: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{**p, "display": ["b", "a"] if rng.random() < 0.5 else ["a", "b"]} for p in payloads]


def _is_candidates(path: Path) -> bool:
    for _, record in read_records(str(path)):
        return "candidate_index" in record and "text" in record
    return False


def side_by_side_payloads(path: str | Path, seed: int = 0) -> list[dict[str, Any]]:
    """Side-by-side task payloads from a comparisons file or a candidates file (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), None, None, "no such file")
    payloads: list[dict[str, Any]] = []
    errors: list[DataError] = []
    if _is_candidates(path):
        rows, lines = read_candidate_rows(path)
        by_prompt: dict[str, list[tuple[dict, int]]] = {}
        for row, line in zip(rows, lines):
            by_prompt.setdefault(row["prompt_id"], []).append((row, line))
        for pid, group in by_prompt.items():
            group.sort(key=lambda rl: rl[0]["candidate_index"])
            first, line = group[0]
            second = next((r for r, _ in group[1:] if r["text"].strip() != first["text"].strip()), None)
            if second is None:
                continue  # one distinct answer: nothing to compare
            payloads.append({"prompt": first["prompt"], "a": first["text"], "b": second["text"],
                             "source": f"{path}:{line}", "prompt_id": pid, "category": category(first.get("metadata")),
                             "model": first.get("model")})
    else:
        for row, record in read_records(str(path), errors=errors):
            try:
                payload = {"prompt": _prompt(record.get("prompt"), str(path), row),
                           "a": _text(record, "response_a", str(path), row),
                           "b": _text(record, "response_b", str(path), row), "source": f"{path}:{row}",
                           "category": category(record.get("metadata"))}
            except DataError as e:
                errors.append(e)
                continue
            for key in ("model_a", "model_b"):
                if isinstance(record.get(key), str):
                    payload[key] = record[key]
            payloads.append(payload)
    if errors:
        raise DataErrors(errors)
    if not payloads:
        raise DataError(str(path), None, None, "no comparisons in the file (a candidates file needs two different "
                        "candidates of one prompt)")
    return with_display(payloads, seed)


def audit_items(*, pairs: str | Path | None = None, comparisons: str | Path | None = None,
                candidates: str | Path | None = None) -> list[dict[str, Any]]:
    """A judge's decisions as audit items ``{prompt, a, b, judge, confidence, category, source}``."""
    if (pairs is None) == (comparisons is None):
        raise ValueError("give a judge's pairs.jsonl or its comparisons.jsonl (with the candidates), not both")
    by_key: dict[tuple[str, int], dict] = {}
    if candidates is not None:
        rows, _ = read_candidate_rows(candidates)
        by_key = {(r["prompt_id"], r["candidate_index"]): r for r in rows}
    meta_of = {pid: r.get("metadata") for (pid, _), r in by_key.items()}
    items: list[dict[str, Any]] = []
    errors: list[DataError] = []
    source = str(pairs if pairs is not None else comparisons)
    if not Path(source).is_file():
        raise DataError(source, None, None, "no such file")
    for row, record in read_records(source, errors=errors):
        try:
            if pairs is not None:
                margin = record.get("margin")
                items.append({"prompt": _prompt(record.get("prompt"), source, row),
                              "a": _text(record, "chosen", source, row), "b": _text(record, "rejected", source, row),
                              "judge": "a", "confidence": float(margin) if isinstance(margin, (int, float)) else None,
                              "category": category(meta_of.get(record.get("prompt_id"))), "source": f"{source}:{row}"})
                continue
            if candidates is None:
                raise ValueError("comparisons.jsonl names candidates by index: give the candidates file too")
            if record.get("winner") not in ("a", "b", "tie"):
                raise DataError(source, row, "winner", f"must be a, b or tie, got {record.get('winner')!r}")
            found = [by_key.get((record.get("prompt_id"), record.get(k))) for k in ("a_index", "b_index")]
            if None in found:
                raise DataError(source, row, "prompt_id", "names a candidate that is not in the candidates file")
            a, b = found
            confidence = record.get("confidence")
            items.append({"prompt": a["prompt"], "a": a["text"], "b": b["text"], "judge": record["winner"],
                          "confidence": float(confidence) if isinstance(confidence, (int, float)) else None,
                          "category": category(a.get("metadata")), "source": f"{source}:{row}"})
        except DataError as e:
            errors.append(e)
    if errors:
        raise DataErrors(errors)
    if not items:
        raise DataError(source, None, None, "no judge decisions in the file")
    return items
