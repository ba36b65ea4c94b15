"""IFEval-style instruction constraints: one pure function per kind, one table, and the checks around it.

A constraint is ``{"kind": str, "args": {...}}`` (see docs/CANDIDATES.md). Each kind is a function
``(text, **args) -> bool`` registered in ``CONSTRAINTS``; its docstring is the exact rule. Shared rules:

- Every constraint fails on an empty (whitespace-only) response: an empty reply follows no instruction.
- Functions see the text as given; most strip surrounding whitespace first, as their docstrings say.
- Words, sentences and paragraphs are counted by ``counting.py`` (one definition for every kind).
- Argument values may arrive as strings from JSON files (``{"n": "5"}``); numbers are coerced, anything
  else that does not fit the declared type is a ``ValueError`` naming the kind and the argument.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from posttrain.verifiers.counting import RELATIONS, compare, paragraphs, phrase_count, sentences, words

# ----------------------------------------------------------------------------------------------- the kinds


def lowercase(text: str) -> bool:
    """Has at least one letter and no uppercase letter (``text == text.lower()``)."""
    return any(c.isalpha() for c in text) and text == text.lower()


def all_caps(text: str) -> bool:
    """Has at least one letter and no lowercase letter (``text == text.upper()``)."""
    return any(c.isalpha() for c in text) and text == text.upper()


def capital_word_frequency(text: str, n: int, relation: str = "at least") -> bool:
    """The number of all-capital words <relation> ``n``. A capital word is a word (``counting.words``) with at
    least one letter and no lowercase letter; single letters such as "I" and "A" count, as in IFEval."""
    caps = [w for w in words(text) if any(c.isalpha() for c in w) and w == w.upper()]
    return compare(len(caps), relation, n)


def word_count(text: str, min: int | None = None, max: int | None = None) -> bool:  # noqa: A002 (arg names)
    """``min <= number of words <= max`` (inclusive; either bound may be left out). Words: ``counting.words``."""
    n = len(words(text))
    return (min is None or n >= min) and (max is None or n <= max)


def exact_word_count(text: str, n: int) -> bool:
    """Exactly ``n`` words (``counting.words``: whitespace-separated tokens holding a letter or digit)."""
    return len(words(text)) == n


def sentence_count(text: str, min: int | None = None, max: int | None = None) -> bool:  # noqa: A002
    """``min <= number of sentences <= max`` (inclusive; either bound may be left out). A sentence ends at
    . ! ? followed by whitespace or the end, or at a line break (``counting.sentences``)."""
    n = len(sentences(text))
    return (min is None or n >= min) and (max is None or n <= max)


def paragraph_count(text: str, n: int, divider: str | None = None) -> bool:
    """Exactly ``n`` paragraphs, separated by blank lines or by lines holding only "***" (``counting.paragraphs``).
    With ``divider`` (e.g. "***", for a prompt that names it) the paragraphs must be separated by lines holding
    only the divider: ``n`` parts between such lines, each one paragraph (a blank line alone does not separate)."""
    if divider is None:
        return len(paragraphs(text)) == n
    parts = re.split(rf"^[ \t]*{re.escape(divider.strip())}[ \t]*$", text, flags=re.MULTILINE)
    return len(parts) == n and all(len(paragraphs(part)) == 1 for part in parts)


def include_keywords(text: str, keywords: list[str]) -> bool:
    """Every keyword occurs at least once, case-insensitively, as whole words ("cat" does not match "category")."""
    return all(phrase_count(text, k) > 0 for k in keywords)


def exclude_keywords(text: str, keywords: list[str]) -> bool:
    """No keyword occurs, case-insensitively, as whole words (same matching as ``include_keywords``)."""
    return not any(phrase_count(text, k) > 0 for k in keywords)


def keyword_frequency(text: str, keyword: str, n: int, relation: str = "at least") -> bool:
    """Whole-word, case-insensitive, non-overlapping occurrences of ``keyword`` <relation> ``n``."""
    return compare(phrase_count(text, keyword), relation, n)


def letter_frequency(text: str, letter: str, n: int, relation: str = "at least") -> bool:
    """Occurrences of the single letter ``letter`` anywhere in the text, case-insensitively, <relation> ``n``."""
    return compare(text.lower().count(letter.lower()), relation, n)


def no_commas(text: str) -> bool:
    """No ASCII comma "," anywhere."""
    return "," not in text


def forbidden_characters(text: str, chars: str) -> bool:
    """None of the characters of the string ``chars`` occurs (case-sensitive)."""
    return not any(c in text for c in chars)


def starts_with_phrase(text: str, phrase: str) -> bool:
    """The stripped text starts with the stripped ``phrase`` (case-sensitive) and has more than whitespace after
    it: a reply that is only the phrase answers nothing."""
    t, p = text.strip(), phrase.strip()
    return t.startswith(p) and bool(t[len(p):].strip())


def ends_with_phrase(text: str, phrase: str) -> bool:
    """The stripped text ends with the stripped ``phrase`` (case-sensitive) and has more than whitespace
    before it."""
    t, p = text.strip(), phrase.strip()
    return t.endswith(p) and bool(t[: len(t) - len(p)].strip())


def double_quotes(text: str) -> bool:
    """The stripped text starts and ends with a double quote (straight ``"..."`` or curly ``“...”``) with
    something other than whitespace between them."""
    t = text.strip()
    return len(t) >= 3 and (t[0], t[-1]) in (('"', '"'), ("“", "”")) and bool(t[1:-1].strip())


def exclamation_sentence(text: str) -> bool:
    """Exactly one sentence (``counting.sentences``, so no line break and no inner . ! ? before whitespace)
    and the stripped text ends with "!"."""
    return len(sentences(text)) == 1 and text.strip().endswith("!")


def paragraph_first_word(text: str, n: int, nth: int, word: str) -> bool:
    """Exactly ``n`` paragraphs (``counting.paragraphs``) and paragraph ``nth`` (1-based) starts with ``word``:
    its first whitespace token, leading quotes stripped and cut at the first . , ? ! ' or ", equals ``word``
    case-insensitively (IFEval's nth_paragraph_first_word)."""
    paras = paragraphs(text)
    if len(paras) != n or not 1 <= nth <= n:
        return False
    first = paras[nth - 1].split()[0].lstrip("'\"")
    return re.split(r"[.,?!'\"]", first)[0].lower() == word.strip().lower()


IFEVAL_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def constrained_response(text: str, options: list[str] | tuple[str, ...] = IFEVAL_RESPONSE_OPTIONS) -> bool:
    """The stripped text contains one of ``options`` (case-sensitive; IFEval's constrained_response, whose
    default options are "My answer is yes.", "My answer is no." and "My answer is maybe.")."""
    return any(option.strip() in text.strip() for option in options)


def _json_value(text: str) -> tuple[bool, Any]:
    """(parsed, value) of the stripped text, or of the body of one ```json (or bare ```) fence around it all."""
    t = text.strip()
    fenced = re.fullmatch(r"```(?:json)?[ \t]*\n(.*)\n?```", t, flags=re.DOTALL | re.IGNORECASE)
    try:
        return True, json.loads(fenced.group(1) if fenced else t)
    except ValueError:
        return False, None


def valid_json(text: str) -> bool:
    """The whole stripped text (optionally wrapped in one ```json fence) parses as JSON."""
    return _json_value(text)[0]


def json_answer(text: str) -> bool:
    """``valid_json``, the value is an object whose only key is "answer", and that answer is not null or ""."""
    ok, value = _json_value(text)
    return ok and isinstance(value, dict) and list(value) == ["answer"] and value["answer"] not in (None, "")


def bullet_list(text: str, n: int, markers: str = "-*") -> bool:
    """Exactly ``n`` bullet lines: lines that start (after optional indentation) with one character of
    ``markers``, a space, then non-blank content. Other lines (an intro sentence) are allowed; "1." items and
    "*emphasis*" (no space after the star) are not bullets."""
    marker_class = "[" + re.escape(markers) + "]"
    return len(re.findall(rf"^[ \t]*{marker_class} +\S.*$", text, flags=re.MULTILINE)) == n


def bullet_list_2(text: str) -> bool:
    """Exactly two "- " bullets (``bullet_list`` with n=2, markers="-"; the shipped data's "* " items fail)."""
    return bullet_list(text, 2, "-")


def sections(text: str, n: int, marker: str = "SECTION") -> bool:
    """Exactly ``n`` section headers: lines that start (after optional indentation, "#"s or "**") with
    ``marker`` (case-sensitive), whitespace, and a number, e.g. "SECTION 1"."""
    header = rf"^[ \t]*(?:#+[ \t]*|\*\*)?{re.escape(marker)}[ \t]+\d+\b"
    return len(re.findall(header, text, flags=re.MULTILINE)) == n


def title(text: str) -> bool:
    """Has a title in double angular brackets, ``<<like this>>``, on one line with non-blank content."""
    return any(m.strip() for m in re.findall(r"<<([^\n<>]+)>>", text))


def placeholders(text: str, n: int) -> bool:
    """At least ``n`` placeholders: square brackets on one line around non-blank text, e.g. ``[address]``."""
    return sum(1 for m in re.findall(r"\[([^\[\]\n]*)\]", text) if m.strip()) >= n


def postscript(text: str, marker: str = "P.S.") -> bool:
    """A line starts (after optional indentation) with ``marker`` (case-insensitive) followed by non-blank
    content on that line."""
    return re.search(rf"^[ \t]*{re.escape(marker)}[ \t]*\S", text, flags=re.MULTILINE | re.IGNORECASE) is not None


def highlighted_sections(text: str, n: int) -> bool:
    """At least ``n`` markdown highlights ``*text*`` or ``**text**`` on one line whose text neither starts nor
    ends with whitespace (so a "* " bullet marker is not the start of a highlight)."""
    pattern = r"\*\*(?![\s*])([^\n*]*?[^\s*])\*\*|\*(?![\s*])([^\n*]*?[^\s*])\*"
    return len(re.findall(pattern, text)) >= n


def ascii_only(text: str) -> bool:
    """No letter outside ASCII (a response in English only: "café" fails; "—" and emoji are not letters)."""
    return not any(c.isalpha() and not c.isascii() for c in text)


def _squash(s: str) -> str:
    return " ".join(s.split()).lower()


def repeat_prompt(text: str, prompt_to_repeat: str) -> bool:
    """The text starts with ``prompt_to_repeat`` (case-insensitive, runs of whitespace treated as one space)
    and has more after it: the request is repeated word for word, then answered."""
    t, p = _squash(text), _squash(prompt_to_repeat)
    return t.startswith(p) and bool(t[len(p):].strip())


def two_responses(text: str) -> bool:
    """Splitting on "******" gives exactly two parts, both non-blank, that differ after stripping."""
    parts = [p.strip() for p in text.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


# ----------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class ConstraintSpec:
    """``args``/``optional``: argument name -> type name (a key of ``_COERCE``); optional args take the
    function's default. ``needs_one_of``: at least one of these optional args must be given."""

    name: str
    fn: Callable[..., bool]
    args: dict[str, str]
    description: str
    optional: dict[str, str] = field(default_factory=dict)
    needs_one_of: tuple[str, ...] = ()


def _spec(name, fn, args, description, optional=None, needs_one_of=()) -> ConstraintSpec:
    return ConstraintSpec(name, fn, args, description, optional or {}, needs_one_of)


_N, _REL, _BOUNDS = {"n": "int"}, {"relation": "relation"}, {"min": "int", "max": "int"}

CONSTRAINTS: dict[str, ConstraintSpec] = {spec.name: spec for spec in (
    _spec("lowercase", lowercase, {}, "all lowercase letters"),
    _spec("all_caps", all_caps, {}, "all capital letters"),
    _spec("uppercase", all_caps, {}, "alias of all_caps"),
    _spec("capital_word_frequency", capital_word_frequency, _N, "count of ALL-CAPS words <relation> n", _REL),
    _spec("word_count", word_count, {}, "min <= words <= max", _BOUNDS, ("min", "max")),
    _spec("exact_word_count", exact_word_count, _N, "exactly n words"),
    _spec("sentence_count", sentence_count, {}, "min <= sentences <= max", _BOUNDS, ("min", "max")),
    _spec("paragraph_count", paragraph_count, _N, "exactly n paragraphs (blank line or *** between)",
          {"divider": "str"}),
    _spec("paragraph_first_word", paragraph_first_word, {**_N, "nth": "int", "word": "str"},
          "exactly n paragraphs, paragraph nth starts with word"),
    _spec("include_keywords", include_keywords, {"keywords": "str_list"}, "every keyword appears"),
    _spec("exclude_keywords", exclude_keywords, {"keywords": "str_list"}, "no keyword appears"),
    _spec("keyword_frequency", keyword_frequency, {"keyword": "str", **_N}, "keyword count <relation> n", _REL),
    _spec("letter_frequency", letter_frequency, {"letter": "letter", **_N}, "letter count <relation> n", _REL),
    _spec("no_commas", no_commas, {}, "no commas"),
    _spec("forbidden_characters", forbidden_characters, {"chars": "str"}, "none of the given characters"),
    _spec("starts_with_phrase", starts_with_phrase, {"phrase": "str"}, "starts with the phrase"),
    _spec("ends_with_phrase", ends_with_phrase, {"phrase": "str"}, "ends with the phrase"),
    _spec("end_checker", ends_with_phrase, {"phrase": "str"}, "alias of ends_with_phrase"),
    _spec("double_quotes", double_quotes, {}, "wrapped in double quotes"),
    _spec("wrapped_in_quotes", double_quotes, {}, "alias of double_quotes"),
    _spec("exclamation_sentence", exclamation_sentence, {}, "one sentence ending with '!'"),
    _spec("constrained_response", constrained_response, {}, "contains one of the given answer options",
          {"options": "str_list"}),
    _spec("valid_json", valid_json, {}, "the whole response is JSON"),
    _spec("json_answer", json_answer, {}, 'a JSON object {"answer": ...} and nothing else'),
    _spec("bullet_list", bullet_list, _N, "exactly n markdown bullets", {"markers": "str"}),
    _spec("bullet_list_2", bullet_list_2, {}, "exactly two '- ' bullets"),
    _spec("sections", sections, _N, "exactly n 'SECTION X' headers", {"marker": "str"}),
    _spec("title", title, {}, "a <<title>>"),
    _spec("placeholders", placeholders, _N, "at least n [placeholders]"),
    _spec("postscript", postscript, {}, "a P.S. line", {"marker": "str"}),
    _spec("highlighted_sections", highlighted_sections, _N, "at least n *highlighted* parts"),
    _spec("ascii_only", ascii_only, {}, "no non-ASCII letters"),
    _spec("repeat_prompt", repeat_prompt, {"prompt_to_repeat": "str"}, "repeats the request, then answers"),
    _spec("two_responses", two_responses, {}, "two different responses separated by ******"),
)}

# ----------------------------------------------------------------------------------------------- arguments


def _int(v: Any) -> int:
    if isinstance(v, bool):  # bool is an int subclass; True as a count is a mistake, not 1
        raise ValueError
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*\d+\s*", v):
        v = int(v)
    if not isinstance(v, int) or v < 0:
        raise ValueError
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError
    return v


def _str_list(v: Any) -> list[str]:
    items = [v] if isinstance(v, str) else v  # one keyword given bare is still one keyword
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError
    return [_str(x) for x in items]


def _relation(v: Any) -> str:
    r = " ".join(_str(v).replace("_", " ").lower().split())
    if r not in RELATIONS:
        raise ValueError
    return r


def _letter(v: Any) -> str:
    if not isinstance(v, str) or len(v) != 1 or not v.isalpha():
        raise ValueError
    return v


_COERCE: dict[str, tuple[Callable[[Any], Any], str]] = {
    "int": (_int, "a non-negative integer"),
    "str": (_str, "a non-empty string"),
    "str_list": (_str_list, "a non-empty list of non-empty strings"),
    "relation": (_relation, "one of " + ", ".join(repr(r) for r in RELATIONS)),
    "letter": (_letter, "a single letter"),
}


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def validate_constraint(kind: Any, args: Any) -> dict[str, Any]:
    """The coerced arguments of constraint ``kind``; ``ValueError`` (one line naming kind and argument) for an
    unknown kind, a missing, unknown or ill-typed argument. Arguments set to None count as not given."""
    if not isinstance(kind, str) or kind not in CONSTRAINTS:
        raise ValueError(f"unknown constraint kind {_short(kind)}; known kinds: {', '.join(CONSTRAINTS)}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError(f"constraint {kind!r}: args must be an object, got {_short(args)}")
    spec = CONSTRAINTS[kind]
    given = {k: v for k, v in args.items() if v is not None}
    types = {**spec.args, **spec.optional}
    for name in given:
        if name not in types:
            takes = ", ".join(types) or "no args"
            raise ValueError(f"constraint {kind!r}: unknown arg {name!r} (takes: {takes})")
    for name in spec.args:
        if name not in given:
            raise ValueError(f"constraint {kind!r}: missing required arg {name!r} ({_COERCE[spec.args[name]][1]})")
    if spec.needs_one_of and not any(name in given for name in spec.needs_one_of):
        raise ValueError(f"constraint {kind!r}: needs at least one of args {', '.join(map(repr, spec.needs_one_of))}")
    out = {}
    for name, value in given.items():
        coerce, expected = _COERCE[types[name]]
        try:
            out[name] = coerce(value)
        except (ValueError, TypeError):
            raise ValueError(f"constraint {kind!r}: arg {name!r} must be {expected}, got {_short(value)}") from None
    if out.get("min") is not None and out.get("max") is not None and out["min"] > out["max"]:
        raise ValueError(f"constraint {kind!r}: arg 'min' ({out['min']}) is greater than arg 'max' ({out['max']})")
    return out


def check_constraint(text: str, kind: str, args: dict[str, Any] | None = None) -> bool:
    """Whether ``text`` obeys constraint ``kind``; ``ValueError`` for a bad spec (see ``validate_constraint``)."""
    coerced = validate_constraint(kind, args)
    return bool(text.strip()) and CONSTRAINTS[kind].fn(text, **coerced)


@dataclass
class ConstraintResult:
    """One constraint checked against one response. ``error`` is set (and ``passed`` False) for a bad spec."""

    name: str
    args: dict[str, Any]
    passed: bool
    error: str | None = None


def check_constraints(text: str, constraints: list[dict[str, Any]]) -> list[ConstraintResult]:
    """Check each ``{"kind": ..., "args": {...}}``; a bad spec becomes a failed result carrying its error rather
    than an exception, so one report covers every constraint."""
    results = []
    for c in constraints:
        kind, args = c.get("kind"), c.get("args") or {}
        try:
            results.append(ConstraintResult(str(kind), args, check_constraint(text, kind, args)))
        except ValueError as e:
            results.append(ConstraintResult(str(kind), args if isinstance(args, dict) else {}, False, str(e)))
    return results


def constraints_from_metadata(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The validated ``[{"kind", "args"}]`` of a prompt's metadata: the ``constraints`` list and/or the
    single ``constraint`` + ``constraint_args`` form of the shipped data (both are read when both are present).
    Empty when neither is present; ``ValueError`` (one line) for a malformed entry, unknown kind or bad arg."""
    raw: list[tuple[Any, Any]] = []
    listed = metadata.get("constraints")
    if listed is not None:
        if not isinstance(listed, list):
            raise ValueError(f"metadata 'constraints' must be a list of {{'kind': ..., 'args': {{...}}}}, "
                             f"got {type(listed).__name__}")
        for i, c in enumerate(listed):
            if not isinstance(c, dict) or "kind" not in c or set(c) - {"kind", "args"}:
                raise ValueError(f"metadata 'constraints[{i}]' must be {{'kind': ..., 'args': {{...}}}}, "
                                 f"got {_short(c)}")
            raw.append((c["kind"], c.get("args")))
    if metadata.get("constraint") is not None:
        raw.append((metadata["constraint"], metadata.get("constraint_args")))
    return [{"kind": kind, "args": validate_constraint(kind, args)} for kind, args in raw]
