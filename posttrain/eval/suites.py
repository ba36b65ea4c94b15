"""Eval suites as data: a JSONL of prompt rows, each with a ``kind`` that says how its response is scored.

Row schema (any prompt layout ``load_examples(path, "prompt")`` accepts, plus):
- ``id`` (optional; default the prompt id of docs/CANDIDATES.md), ``kind`` (required), one of:
  - ``constraint``: ``constraints`` (``[{"kind", "args"}]``, or ``constraint`` + ``constraint_args``) must all pass;
  - ``exact``: ``answer`` (string), optional ``match``: ``math`` (default; final-answer equivalence),
    ``exact`` (whole response, case-insensitive, whitespace-normalised) or ``contains`` (answer appears in the
    response, case-insensitive);
  - ``refusal_benign``: an edgy-sounding but harmless request that should be answered;
  - ``refusal_harmful``: a clearly harmful request that should be refused.

Builtin suites (``posttrain/resources/eval/``): ``constraints``, ``capability``, ``refusal``. Anything else is
read as a path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.data.schema import DataError, DataErrors, Message, PromptExample

KINDS = ("constraint", "exact", "refusal_benign", "refusal_harmful")
MATCHES = ("math", "exact", "contains")
RESOURCES = Path(__file__).resolve().parent.parent / "resources" / "eval"
BUILTIN_SUITES = {
    "constraints": RESOURCES / "constraints_heldout.jsonl",
    "capability": RESOURCES / "capability.jsonl",
    "refusal": RESOURCES / "refusal.jsonl",
}


@dataclass
class EvalRow:
    """One prompt of a suite. ``metadata`` keeps every extra field of the row (constraints, answer, match)."""

    suite: str
    id: str
    kind: str
    prompt: list[Message]
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    row: int = 0


def suite_path(name_or_path: str) -> tuple[str, Path]:
    """(suite name, file): a builtin name, or a path whose stem names the suite."""
    if name_or_path in BUILTIN_SUITES:
        return name_or_path, BUILTIN_SUITES[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        raise DataError(name_or_path, None, None, f"no such suite file (builtin suites: {', '.join(BUILTIN_SUITES)})")
    return path.stem, path


def _check_row(ex: PromptExample) -> DataError | None:
    """The first problem of a suite row, as one line naming file, row and field; None when it is fine."""
    from posttrain.judges.verifiers import constraints_from_metadata

    md = ex.metadata
    kind = md.get("kind")
    if kind not in KINDS:
        return DataError(ex.source, ex.row, "kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "constraint":
        try:
            if not constraints_from_metadata(md):
                return DataError(ex.source, ex.row, "constraints", "a constraint row needs at least one constraint")
        except ValueError as e:
            return DataError(ex.source, ex.row, "constraints", str(e))
    if kind == "exact":
        if not isinstance(md.get("answer"), str | int | float) or isinstance(md.get("answer"), bool):
            return DataError(ex.source, ex.row, "answer", "an exact row needs an 'answer' (string or number)")
        if md.get("match", "math") not in MATCHES:
            return DataError(ex.source, ex.row, "match", f"must be one of {', '.join(MATCHES)}, got {md['match']!r}")
    return None


def rows_from_examples(suite: str, examples: list[PromptExample]) -> list[EvalRow]:
    """Validated ``EvalRow``s; ``DataErrors`` lists every bad row (and duplicate ids) at once."""
    from posttrain.generation.candidates import prompt_id

    errors: list[DataError] = []
    rows: list[EvalRow] = []
    seen: dict[str, int] = {}
    for ex in examples:
        rid = str(ex.metadata.get("id") or prompt_id(ex.prompt))
        err = _check_row(ex)
        if err is None and rid in seen:
            err = DataError(ex.source, ex.row, "id", f"duplicate id {rid!r} (first at row {seen[rid]})")
        seen.setdefault(rid, ex.row)
        if err:
            errors.append(err)
            continue
        md = {k: v for k, v in ex.metadata.items() if k not in ("id", "kind")}
        rows.append(EvalRow(suite, rid, ex.metadata["kind"], ex.prompt, md, ex.source, ex.row))
    if errors:
        raise DataErrors(errors)
    return rows


def load_suite(name_or_path: str) -> list[EvalRow]:
    """Every row of a builtin suite or a suite file, validated (``DataErrors`` otherwise)."""
    from posttrain.data.layouts import load_examples

    name, path = suite_path(name_or_path)
    return rows_from_examples(name, load_examples(str(path), "prompt"))  # type: ignore[arg-type]
