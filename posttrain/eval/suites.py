"""Eval suites as data: a JSONL of prompt rows, each with a ``kind`` that says how its response is scored.

Row schema (any prompt layout ``load_examples(path, "prompt")`` accepts, plus):
- ``id`` (optional; default the prompt id of docs/CANDIDATES.md), ``kind`` (required), one of:
  - ``constraint``: ``constraints`` (``[{"kind", "args"}]``, or ``constraint`` + ``constraint_args``) must all pass;
    an IFEval-format row (``instruction_id_list`` + ``kwargs``, or RLVR-IFeval ``ground_truth``) is a
    constraint row without saying so;
  - ``exact``: ``answer`` (string), optional ``match``: ``math`` (default; final-answer equivalence),
    ``exact`` (whole response, case-insensitive, whitespace-normalised), ``contains`` (answer appears in the
    response, case-insensitive) or ``regex`` (``answer`` is a pattern found anywhere, case-insensitive); optional
    ``min_words``: the response must also have at least that many words (free-form answers: a bare keyword
    does not pass for an explanation);
  - ``refusal_benign``: an edgy-sounding but harmless request that should be answered;
  - ``refusal_harmful``: a clearly harmful request that should be refused.
- ``group`` (optional): the group the row's scores count in (``group/<group>/*`` metrics); default the suite's.

Builtin suites (``posttrain/resources/eval/``, table ``BUILTIN``): in distribution (the quickstart's own task
shapes and templates) ``constraints``, ``capability``; out of distribution (task types and phrasings the
training data never uses) ``constraints_ood``, ``ifeval_sample`` (IFEval format), ``capability_freeform``,
``constraints_ood2`` (99 constraint prompts written in session 38 apart from every other suite, in ``posttrain eval``'s
defaults; the shipped recipes' eval stages keep the first three, so their numbers compare across sessions);
``refusal`` (group ``safety``); ``constraints_reserve`` (group ``reserve``: 100 constraint prompts written apart from
every other suite and never used to pick a recipe, for an unbiased read of a recipe tuned on the suites above; keep
it out of any comparison that chooses settings, or it stops being one). Anything else is read as a path (group
``custom``). A suite name or path may end in ``@N``: generate at most N new tokens for it (default: the suite's own
budget, else the run's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.data.layouts import load_examples
from posttrain.data.schema import DataError, DataErrors, Message, PromptExample
from posttrain.generation.candidates import prompt_id
from posttrain.verifiers import constraints_from_metadata

KINDS = ("constraint", "exact", "refusal_benign", "refusal_harmful")
MATCHES = ("math", "exact", "contains", "regex")
RESOURCES = Path(__file__).resolve().parent.parent / "resources" / "eval"
IN_DISTRIBUTION, OUT_OF_DISTRIBUTION, CUSTOM = "in_distribution", "out_of_distribution", "custom"
RESERVE = "reserve"


@dataclass(frozen=True)
class BuiltinSuite:
    """``max_new_tokens``: the suite's own generation budget (None: the run's), sized to its answers."""

    file: str
    group: str
    max_new_tokens: int | None = None


BUILTIN = {
    "constraints": BuiltinSuite("constraints_heldout.jsonl", IN_DISTRIBUTION),
    "capability": BuiltinSuite("capability.jsonl", IN_DISTRIBUTION),
    "refusal": BuiltinSuite("refusal.jsonl", "safety"),
    # Paragraph, list, title and postscript answers need room: 256 new tokens is ~190 words.
    "constraints_ood": BuiltinSuite("constraints_ood.jsonl", OUT_OF_DISTRIBUTION, 256),
    "ifeval_sample": BuiltinSuite("ifeval_sample.jsonl", OUT_OF_DISTRIBUTION, 256),
    "capability_freeform": BuiltinSuite("capability_freeform.jsonl", OUT_OF_DISTRIBUTION, 128),
    # Written in session 38 the way constraints_reserve was (open-ended tasks, 25 kinds, two wordings each, none
    # shared with the training data or another suite), to read a recipe on more fresh prompts than the two above.
    "constraints_ood2": BuiltinSuite("constraints_ood2.jsonl", OUT_OF_DISTRIBUTION, 256),
    # Reserved (session 37): tasks and wordings written apart from the training data and from the two suites above,
    # never used to choose a recipe; its own group, so that it never moves an out_of_distribution number or gate.
    "constraints_reserve": BuiltinSuite("constraints_reserve.jsonl", RESERVE, 256),
}
BUILTIN_SUITES = {name: RESOURCES / suite.file for name, suite in BUILTIN.items()}


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
    group: str = CUSTOM


@dataclass(frozen=True)
class SuiteSpec:
    """A suite as a run uses it: name, file, default group, own budget (None: the run's)."""

    name: str
    path: Path
    group: str
    max_new_tokens: int | None


def parse_suite(entry: str) -> SuiteSpec:
    """A builtin name or a path, optionally ending in ``@N`` (its max new tokens). ``DataError`` if not found."""
    name_or_path, tokens = entry, None
    head, sep, tail = entry.rpartition("@")
    if sep and tail.isdigit() and (head in BUILTIN or Path(head).exists()) and not Path(entry).exists():
        name_or_path, tokens = head, int(tail)
        if tokens < 1:
            raise DataError(entry, None, None, "a suite's budget (after '@') must be at least 1 new token")
    if name_or_path in BUILTIN:
        suite = BUILTIN[name_or_path]
        return SuiteSpec(name_or_path, RESOURCES / suite.file, suite.group, tokens or suite.max_new_tokens)
    path = Path(name_or_path)
    if not path.exists():
        raise DataError(entry, None, None, f"no such suite file (builtin suites: {', '.join(BUILTIN)})")
    return SuiteSpec(path.stem, path, CUSTOM, tokens)


def suite_path(name_or_path: str) -> tuple[str, Path]:
    """(suite name, file): a builtin name, or a path whose stem names the suite (either may end in ``@N``)."""
    spec = parse_suite(name_or_path)
    return spec.name, spec.path


def _check_row(ex: PromptExample) -> DataError | None:
    """The first problem of a suite row, as one line naming file, row and field; None when it is fine."""
    md = ex.metadata
    kind = row_kind(md)
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
        if md.get("match") == "regex":
            try:
                re.compile(str(md["answer"]))
            except re.error as e:
                return DataError(ex.source, ex.row, "answer", f"invalid regex {md['answer']!r}: {e}")
        min_words = md.get("min_words")
        if min_words is not None and (isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 1):
            return DataError(ex.source, ex.row, "min_words", f"must be a positive integer, got {min_words!r}")
    group = md.get("group")
    if group is not None and (not isinstance(group, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", group)):
        return DataError(ex.source, ex.row, "group", f"must be a name of letters, digits, '_', '.', '-', got {group!r}")
    return None


def row_kind(metadata: dict[str, Any]) -> Any:
    """The row's ``kind``; an IFEval-format row (its instructions read as ``constraints``) is a constraint row."""
    if metadata.get("kind") is None and metadata.get("instruction_id_list") is not None:
        return "constraint"
    return metadata.get("kind")


def rows_from_examples(suite: str, examples: list[PromptExample], group: str = CUSTOM) -> list[EvalRow]:
    """Validated ``EvalRow``s (``group``: the default for rows without their own); ``DataErrors`` lists every bad
    row (and duplicate ids) at once."""
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
        md = {k: v for k, v in ex.metadata.items() if k not in ("id", "kind", "group")}
        rows.append(EvalRow(suite, rid, row_kind(ex.metadata), ex.prompt, md, ex.source, ex.row,
                            ex.metadata.get("group") or group))
    if errors:
        raise DataErrors(errors)
    return rows


def load_suite(name_or_path: str, *, ifeval_unsupported: str = "error",
               skipped: list[DataError] | None = None) -> list[EvalRow]:
    """Every row of a builtin suite or a suite file, validated (``DataErrors`` otherwise). ``ifeval_unsupported``:
    "error" (default) or "skip" IFEval instruction ids with no verifier; rows skipped whole go to ``skipped``."""
    spec = parse_suite(name_or_path)
    examples = load_examples(str(spec.path), "prompt", ifeval_unsupported=ifeval_unsupported, skipped=skipped)
    return rows_from_examples(spec.name, examples, spec.group)  # type: ignore[arg-type]
