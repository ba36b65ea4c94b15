"""IFEval-format instructions mapped onto the constraint kinds of ``constraints.py``.

Two public layouts carry them (both read by ``data/layouts.py::to_prompt``, so ``eval``, ``generate``, ``judge``
and ``grpo`` all accept them):

- google/IFEval: ``{"key", "prompt", "instruction_id_list": [...], "kwargs": [{...}, ...]}``, one kwargs object
  per id. Columnar copies give every kwargs object every argument name, with null where unused: nulls are dropped.
- allenai/RLVR-IFeval: ``{"messages", "ground_truth"}`` where ``ground_truth`` is a JSON string, either one
  instruction as ``{"func_name": "verify_keywords", "N": ..., "quantifier": ..., "keyword_list": ..., ...}``
  (the open-instruct functions) or ``[{"instruction_id": [...], "kwargs": [...]}]`` (later allenai sets, also as a
  Python literal with single quotes).

``IFEVAL_IDS`` maps each supported instruction id to a kind and turns its kwargs into that kind's args. Our rules
are the exact ones in ``constraints.py``; where they differ from IFEval's reference checker it is on purpose
(words and sentences counted one way for every kind) and listed here:

- ``keywords:existence``/``forbidden_words``/``frequency``: whole-word, case-insensitive matches (IFEval: a
  substring regex for existence and frequency);
- ``length_constraints:number_paragraphs``: blank lines also separate paragraphs (IFEval: only ``***``; our own
  rows ask for that rule with ``paragraph_count``'s ``divider: "***"``);
- ``detectable_format:multiple_sections``: exactly n headers (IFEval: at least n);
- ``startend:end_checker``: case-sensitive (IFEval: case-insensitive, a trailing quote ignored);
- ``change_case:english_capital``/``english_lowercase``: letter case only, no language detection.

Ids with no verifier (``UNSUPPORTED_IDS``, and any unknown id) raise ``IFEvalError`` naming the id; with
``unsupported="skip"`` they are dropped from the row and listed in its ``ifeval_skipped`` metadata instead.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from typing import Any

from posttrain.verifiers.constraints import validate_constraint

UNSUPPORTED_IDS = ("language:response_language", "keywords:key_sentences", "detectable_content:rephrase_paragraph",
                   "detectable_format:rephrase", "multi-turn:constrained_start")


class IFEvalError(ValueError):
    """An IFEval-format row that cannot be turned into constraints; ``field`` names the row's field."""

    def __init__(self, field: str, message: str, *, unsupported: bool = False):
        self.field, self.unsupported = field, unsupported
        super().__init__(message)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _bounds(n: Any, relation: Any, around: Callable[[int], int]) -> dict[str, Any]:
    """min/max args of ``word_count``/``sentence_count`` for "<relation> n"; RLVR's "around" is n +- around(n)."""
    rel = " ".join(str(relation or "at least").replace("_", " ").lower().split())
    if isinstance(n, str) and n.strip().isdigit():
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"the count must be an integer, got {_short(n)}")
    table = {"at least": {"min": n}, "more than": {"min": n + 1}, "at most": {"max": n}, "less than": {"max": n - 1},
             "exactly": {"min": n, "max": n}, "around": {"min": max(n - around(n), 0), "max": n + around(n)}}
    if rel not in table:
        raise ValueError(f"relation must be one of {', '.join(map(repr, table))}; got {_short(relation)}")
    return table[rel]


def _renamed(kind: str, names: dict[str, str]):
    """An args builder: IFEval kwarg name -> our arg name (``ifeval_constraint`` rejects kwargs not named)."""
    def build(kw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return kind, {names[k]: v for k, v in kw.items()}
    build.kind, build.accepts = kind, tuple(names)  # type: ignore[attr-defined]
    return build


def _counted(kind: str, count: str, relation: str, around: Callable[[int], int]):
    def build(kw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if count not in kw:
            raise ValueError(f"needs kwarg '{count}'")
        return kind, _bounds(kw[count], kw.get(relation), around)
    build.kind, build.accepts = kind, (count, relation)  # type: ignore[attr-defined]
    return build


# instruction id -> builder(kwargs without nulls) -> (kind, args); ``accepts`` lists the kwargs it reads.
IFEVAL_IDS: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "keywords:existence": _renamed("include_keywords", {"keywords": "keywords"}),
    "keywords:frequency": _renamed("keyword_frequency", {"keyword": "keyword", "frequency": "n",
                                                         "relation": "relation"}),
    "keywords:forbidden_words": _renamed("exclude_keywords", {"forbidden_words": "keywords"}),
    "keywords:letter_frequency": _renamed("letter_frequency", {"letter": "letter", "let_frequency": "n",
                                                               "let_relation": "relation"}),
    "length_constraints:number_sentences": _counted("sentence_count", "num_sentences", "relation",
                                                            lambda n: 1),
    "length_constraints:number_paragraphs": _renamed("paragraph_count", {"num_paragraphs": "n"}),
    "length_constraints:number_words": _counted("word_count", "num_words", "relation",
                                                        lambda n: max(round(n * 0.1), 1)),
    "length_constraints:nth_paragraph_first_word": _renamed(
        "paragraph_first_word", {"num_paragraphs": "n", "nth_paragraph": "nth", "first_word": "word"}),
    "detectable_content:number_placeholders": _renamed("placeholders", {"num_placeholders": "n"}),
    "detectable_content:postscript": _renamed("postscript", {"postscript_marker": "marker"}),
    "detectable_format:number_bullet_lists": _renamed("bullet_list", {"num_bullets": "n"}),
    "detectable_format:constrained_response": _renamed("constrained_response", {"options": "options"}),
    "detectable_format:number_highlighted_sections": _renamed("highlighted_sections", {"num_highlights": "n"}),
    "detectable_format:multiple_sections": _renamed("sections", {"num_sections": "n", "section_spliter": "marker"}),
    "detectable_format:json_format": _renamed("valid_json", {}),
    "detectable_format:title": _renamed("title", {}),
    "combination:two_responses": _renamed("two_responses", {}),
    "combination:repeat_prompt": _renamed("repeat_prompt", {"prompt_to_repeat": "prompt_to_repeat"}),
    "startend:end_checker": _renamed("ends_with_phrase", {"end_phrase": "phrase"}),
    "startend:quotation": _renamed("double_quotes", {}),
    "change_case:capital_word_frequency": _renamed("capital_word_frequency", {"capital_frequency": "n",
                                                                              "capital_relation": "relation"}),
    "change_case:english_capital": _renamed("all_caps", {}),
    "change_case:english_lowercase": _renamed("lowercase", {}),
    "punctuation:no_comma": _renamed("no_commas", {}),
}

IFEVAL_KINDS: dict[str, str] = {i: build.kind for i, build in IFEVAL_IDS.items()}  # type: ignore[attr-defined]

# RLVR-IFeval ``func_name`` (open-instruct's functions) -> (IFEval id, RLVR arg -> IFEval kwarg, fixed kwargs).
# Its keyword and letter frequencies are exact counts; its word/sentence "around" n is n +- 10% (at least 1) / +- 1.
RLVR_FUNCS: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    "verify_keywords": ("keywords:existence", {"keyword_list": "keywords"}, {}),
    "verify_keyword_frequency": ("keywords:frequency", {"word": "keyword", "N": "frequency"},
                                 {"relation": "exactly"}),
    "validate_forbidden_words": ("keywords:forbidden_words", {"forbidden_words": "forbidden_words"}, {}),
    "verify_letter_frequency": ("keywords:letter_frequency", {"letter": "letter", "N": "let_frequency"},
                                {"let_relation": "exactly"}),
    "validate_response_language": ("language:response_language", {"language": "language"}, {}),
    "verify_paragraph_count": ("length_constraints:number_paragraphs", {"N": "num_paragraphs"}, {}),
    "validate_word_constraint": ("length_constraints:number_words", {"N": "num_words", "quantifier": "relation"},
                                 {}),
    "verify_sentence_constraint": ("length_constraints:number_sentences",
                                   {"N": "num_sentences", "quantifier": "relation"}, {}),
    "validate_paragraphs": ("length_constraints:nth_paragraph_first_word",
                            {"N": "num_paragraphs", "i": "nth_paragraph", "first_word": "first_word"}, {}),
    "verify_postscript": ("detectable_content:postscript", {"postscript_marker": "postscript_marker"}, {}),
    "validate_placeholders": ("detectable_content:number_placeholders", {"N": "num_placeholders"}, {}),
    "verify_bullet_points": ("detectable_format:number_bullet_lists", {"N": "num_bullets"}, {}),
    "validate_title": ("detectable_format:title", {}, {}),
    "validate_choice": ("detectable_format:constrained_response", {"options": "options"}, {}),
    "validate_highlighted_sections": ("detectable_format:number_highlighted_sections", {"N": "num_highlights"}, {}),
    "validate_sections": ("detectable_format:multiple_sections",
                          {"N": "num_sections", "section_splitter": "section_spliter"}, {}),
    "validate_json_format": ("detectable_format:json_format", {}, {}),
    "validate_repeat_prompt": ("combination:repeat_prompt", {"original_prompt": "prompt_to_repeat"}, {}),
    "validate_two_responses": ("combination:two_responses", {}, {}),
    "validate_uppercase": ("change_case:english_capital", {}, {}),
    "validate_lowercase": ("change_case:english_lowercase", {}, {}),
    "validate_frequency_capital_words": ("change_case:capital_word_frequency",
                                         {"N": "capital_frequency", "quantifier": "capital_relation"}, {}),
    "validate_end": ("startend:end_checker", {"end_phrase": "end_phrase"}, {}),
    "validate_quotation": ("startend:quotation", {}, {}),
    "validate_no_commas": ("punctuation:no_comma", {}, {}),
}


def ifeval_constraint(instruction_id: Any, kwargs: Any, field: str = "instruction_id_list") -> dict[str, Any]:
    """``{"kind", "args"}`` (args validated) for one instruction; ``IFEvalError`` naming the id otherwise."""
    if not isinstance(instruction_id, str) or instruction_id not in IFEVAL_IDS:
        why = "has no verifier" if instruction_id in UNSUPPORTED_IDS else "is not a known IFEval instruction id"
        raise IFEvalError(field, f"instruction id {_short(instruction_id)} {why} (supported: see "
                          "posttrain/verifiers/ifeval.py IFEVAL_IDS; or skip such ids)", unsupported=True)
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise IFEvalError("kwargs", f"instruction {instruction_id!r}: kwargs must be an object, got {_short(kwargs)}")
    build = IFEVAL_IDS[instruction_id]
    given = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(given) - set(build.accepts))  # type: ignore[attr-defined]
    if unknown:
        takes = ", ".join(build.accepts) or "no kwargs"  # type: ignore[attr-defined]
        raise IFEvalError("kwargs", f"instruction {instruction_id!r}: unknown kwarg {unknown[0]!r} (takes: {takes})")
    try:
        kind, args = build(given)
        return {"kind": kind, "args": validate_constraint(kind, args)}
    except ValueError as e:
        raise IFEvalError("kwargs", f"instruction {instruction_id!r}: {e}") from None


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _from_rlvr_func(gt: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    func = gt["func_name"]
    if func not in RLVR_FUNCS:
        raise IFEvalError("ground_truth", f"func_name {_short(func)} is not a known RLVR-IFeval function "
                          "(see posttrain/verifiers/ifeval.py RLVR_FUNCS; or skip such ids)", unsupported=True)
    instruction_id, names, fixed = RLVR_FUNCS[func]
    return [instruction_id], [{**fixed, **{names[k]: v for k, v in gt.items() if k in names and v is not None}}]


def read_ifeval(record: dict[str, Any]) -> tuple[str, list[str], list[Any]] | None:
    """``(field, instruction ids, kwargs)`` of an IFEval-format record, or None when it is not one: it has no
    ``instruction_id_list``, and no ``ground_truth`` string that parses into RLVR-IFeval's shapes (a math row's
    ``ground_truth: "42"`` is left alone). ``IFEvalError`` for a malformed one."""
    if record.get("instruction_id_list") is not None:
        ids, kwargs = record["instruction_id_list"], record.get("kwargs")
        if kwargs is None:
            kwargs = [{} for _ in ids] if isinstance(ids, list) else None
        field = "instruction_id_list"
    elif isinstance(record.get("ground_truth"), str):
        gt = _literal(record["ground_truth"])
        if isinstance(gt, dict) and "func_name" in gt:
            ids, kwargs = _from_rlvr_func(gt)
        elif (isinstance(gt, list) and gt and all(isinstance(g, dict) and "instruction_id" in g for g in gt)):
            ids = [i for g in gt for i in (g["instruction_id"] if isinstance(g["instruction_id"], list)
                                           else [g["instruction_id"]])]
            kwargs = [k for g in gt for k in (g.get("kwargs") if isinstance(g.get("kwargs"), list)
                                              else [g.get("kwargs")])]
        else:
            return None
        field = "ground_truth"
    else:
        return None
    if not isinstance(ids, list) or not ids:
        raise IFEvalError(field, f"instruction ids must be a non-empty list, got {_short(ids)}")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise IFEvalError("kwargs" if field == "instruction_id_list" else field,
                          f"needs one kwargs object per instruction id ({len(ids)}), got {_short(kwargs)}")
    return field, ids, kwargs


def ifeval_constraints(field: str, ids: list[str], kwargs: list[Any], *, unsupported: str = "error"
                       ) -> tuple[list[dict[str, Any]], list[str]]:
    """(constraints, skipped ids). ``unsupported``: "error" raises ``IFEvalError`` for an id with no verifier;
    "skip" drops it and returns it among the skipped ids. Malformed kwargs are errors either way."""
    if unsupported not in ("error", "skip"):
        raise ValueError(f"unsupported must be 'error' or 'skip', got {unsupported!r}")
    constraints, skipped = [], []
    for instruction_id, kw in zip(ids, kwargs):
        try:
            constraints.append(ifeval_constraint(instruction_id, kw, field))
        except IFEvalError as e:
            if not (e.unsupported and unsupported == "skip"):
                raise
            skipped.append(str(instruction_id))
    return constraints, skipped
