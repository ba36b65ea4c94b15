"""Constraint repair: the smallest edit that makes a response obey its instruction constraints.

The inverse of ``constraints.py``: for each constraint kind, a pure function ``(text, **args) -> str`` that
rewrites a response so that the kind's check passes while the content stays the model's own (lowercase it, wrap it
in quotes, append the requested closing phrase, cut it to the word limit at a sentence boundary, split it into
the requested bullets or sections, ...). ``repair(text, constraints)`` applies the repairs in a fixed order (shape,
then additions, then characters, then wrappers), tidies the text first (an unfinished last sentence cut off,
verbatim repeated sentences dropped), and returns the repaired text only when every constraint then passes
(checked by the verifier itself), else ``None``. Kinds that cannot be repaired without writing new content (a
minimum word or sentence count, "at least n" of a letter) return the text unchanged and so repair only responses
that already meet them.

Why (issue 16): a small model rarely samples a reply that follows an unfamiliar constraint, so best-vs-worst
pairs from its own samples are few and differ in everything (content, length, loops) besides the constraint. A
pair (repaired reply, original reply) differs in the constraint alone, keeps the model's own style and length, and
exists for every prompt (constraint back-translation, Qi et al. 2024, runs the other way: it adds to the prompt
the constraints a reply already meets). ``judge`` uses it with ``pairs.repair`` (docs/CANDIDATES.md).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from posttrain.verifiers.constraints import (
    IFEVAL_RESPONSE_OPTIONS,
    check_constraints,
    constraints_from_metadata,
    validate_constraint,
)
from posttrain.verifiers.counting import compare, phrase_count, sentences, words

_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")
_STOPWORDS = {"a", "an", "the", "of", "and", "or", "to", "in", "on", "is", "are", "was", "were", "it", "its", "for",
              "with", "that", "this", "as", "by", "at", "be", "can", "has", "have", "which", "from"}



# ----------------------------------------------------------------------------------------------- helpers


def tidy(text: str, truncated: bool = False) -> str:
    """The text with verbatim repeated sentences dropped (a decoding loop) and, when ``truncated`` (the generation
    hit its token limit) or the last line has no sentence end, the unfinished tail cut after the last sentence end.
    Line structure is kept. Returns the stripped text unchanged when there is nothing to tidy."""
    seen: set[str] = set()
    lines_out = []
    for line in text.strip().splitlines():
        kept = []
        for piece in re.split(r"(?<=[.!?])\s+", line):
            key = " ".join(piece.lower().split())
            if len(key) > 12 and key in seen:
                continue
            seen.add(key)
            kept.append(piece)
        if kept or not line.strip():
            lines_out.append(" ".join(kept))
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines_out)).strip()
    if truncated or (out and not re.search(r"[.!?][\"'”’)\]]*$", out.splitlines()[-1].strip())):
        ends = list(_SENTENCE_END.finditer(out))
        if ends and ends[-1].end() >= len(out) * 0.3:  # keep the cut only if most of the reply survives
            out = out[: ends[-1].end()].strip()
    return out


def _flat_sentences(text: str) -> list[str]:
    """The sentences of the text, markup (bullets, headers, highlights) removed."""
    body = re.sub(r"^[ \t]*(?:[-*+][ \t]+|#+[ \t]*|\d+[.)][ \t]+)", "", text, flags=re.MULTILINE)
    body = body.replace("**", "").replace("***", "")
    return [s for s in sentences(body) if not re.fullmatch(r"(?i)section\s+\d+:?", s)]


def _groups(items: list[str], n: int) -> list[list[str]]:
    """``items`` split into ``n`` consecutive non-empty groups of near-equal size (``[]`` if fewer items)."""
    if len(items) < n or n <= 0:
        return []
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _cut_words(text: str, limit: int) -> str:
    """The longest run of whole sentences within ``limit`` words; if even the first sentence is longer, its first
    ``limit`` words with a full stop."""
    kept: list[str] = []
    for s in _flat_sentences(text):
        if len(words(" ".join(kept + [s]))) > limit:
            break
        kept.append(s)
    if kept:
        return " ".join(kept)
    first = text.split()[:limit]
    return (" ".join(first).rstrip(",;:") + ".") if first else text


def _join_sentence(a: str, b: str) -> str:
    a = a.rstrip()
    return f"{a} {b}" if a else b


# ----------------------------------------------------------------------------------------------- the kinds


def _lowercase(text: str) -> str:
    return text.lower()


def _all_caps(text: str) -> str:
    return text.upper()


def _capital_word_frequency(text: str, n: int, relation: str = "at least") -> str:
    toks = text.split(" ")
    idx = [i for i, w in enumerate(toks) if any(c.isalpha() for c in w)]
    caps = [i for i in idx if toks[i] == toks[i].upper()]
    if relation in ("at least", "more than", "exactly") and len(caps) < n + (relation == "more than"):
        need = n + (relation == "more than") - len(caps)
        for i in [i for i in idx if i not in caps][:need]:
            toks[i] = toks[i].upper()
    elif relation in ("at most", "less than", "exactly"):
        limit = n - (relation == "less than")
        for i in caps[max(limit, 0):]:
            if len(toks[i]) > 1:
                toks[i] = toks[i].capitalize() if i == 0 else toks[i].lower()
    return " ".join(toks)


def _word_count(text: str, min: int | None = None, max: int | None = None) -> str:  # noqa: A002
    return _cut_words(text, max) if max is not None and len(words(text)) > max else text


def _exact_word_count(text: str, n: int) -> str:
    toks = text.split()
    if len(words(text)) <= n:
        return text
    kept, count = [], 0
    for t in toks:
        kept.append(t)
        count += bool(words(t))
        if count == n:
            break
    return " ".join(kept).rstrip(",;:") + ("" if kept[-1][-1:] in ".!?" else ".")


def _sentence_count(text: str, min: int | None = None, max: int | None = None) -> str:  # noqa: A002
    flat = _flat_sentences(text)
    return " ".join(flat[:max]) if max is not None and len(sentences(text)) > max else text


def _paragraph_count(text: str, n: int, divider: str | None = None) -> str:
    gap = f"\n\n{divider.strip()}\n\n" if divider else "\n\n"
    return gap.join(" ".join(g) for g in _groups(_flat_sentences(text), n)) or text


def _paragraph_first_word(text: str, n: int, nth: int, word: str) -> str:
    groups = _groups(_flat_sentences(text), n)
    if not groups or not 1 <= nth <= n:
        return text
    first = groups[nth - 1][0]
    groups[nth - 1][0] = f"{word.strip().capitalize()}, {first[0].lower()}{first[1:]}"
    return "\n\n".join(" ".join(g) for g in groups)


def _include_keywords(text: str, keywords: list[str]) -> str:
    missing = [k for k in keywords if phrase_count(text, k) == 0]
    if not missing:
        return text
    listed = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
    return _join_sentence(text, f"In a word: {listed}.")


def _remove_words(text: str, keywords: list[str]) -> str:
    for k in keywords:
        body = r"\s+".join(re.escape(part) for part in k.split())
        text = re.sub(rf"(?<!\w){body}(?!\w)[ \t]?", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", text)


def _drop_sentences(text: str, keywords: list[str]) -> str:
    """The text without the sentences that use a keyword (lines kept); the keywords deleted word by word instead
    when that would leave nothing."""
    lines = []
    for line in text.splitlines():
        pieces = re.split(r"(?<=[.!?])\s+", line)
        kept = [p for p in pieces if not any(phrase_count(p, k) for k in keywords)]
        if kept or not line.strip():
            lines.append(" ".join(kept))
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return out if words(out) else _remove_words(text, keywords)


def _exclude_keywords(text: str, keywords: list[str]) -> str:
    return _drop_sentences(text, keywords)


def _keyword_frequency(text: str, keyword: str, n: int, relation: str = "at least") -> str:
    count = phrase_count(text, keyword)
    if compare(count, relation, n):
        return text
    if relation in ("at least", "more than", "exactly") and count < n + (relation == "more than"):
        need = n + (relation == "more than") - count
        return _join_sentence(text, " ".join([f"{keyword.capitalize()}." if i == 0 else f"{keyword.capitalize()} again."
                                              for i in range(need)]))
    return _drop_sentences(text, [keyword])


def _letter_frequency(text: str, letter: str, n: int, relation: str = "at least") -> str:
    return text


def _no_commas(text: str) -> str:
    return re.sub(r"\s*,\s*", " ", text).replace(" .", ".")


def _forbidden_characters(text: str, chars: str) -> str:
    return "".join(c for c in text if c not in chars)


def _starts_with_phrase(text: str, phrase: str) -> str:
    p = phrase.strip()
    if text.strip().startswith(p):
        return text
    sep = " " if p[-1:] in ".!?:," else "! "
    return f"{p}{sep}{text.strip()}"


def _ends_with_phrase(text: str, phrase: str) -> str:
    p = phrase.strip()
    if text.strip().endswith(p):
        return text
    t = text.rstrip()
    if t and t[-1] not in ".!?\"'”)]":
        t += "."
    return f"{t} {p}"


def _double_quotes(text: str) -> str:
    return f"\"{text.strip().replace(chr(34), chr(39))}\""


def _exclamation_sentence(text: str) -> str:
    flat = _flat_sentences(text)
    if not flat:
        return text
    # the first sentence of four words or more: a greeting line ("Hey buddy,") alone is no answer
    first = next((s for s in flat if len(words(s)) >= 4), flat[0])
    return first.replace("! ", ", ").replace("? ", ", ").replace(". ", ", ").rstrip(".!?,;: ") + "!"


def _constrained_response(text: str,
                          options: list[str] | tuple[str, ...] = IFEVAL_RESPONSE_OPTIONS) -> str:
    if any(o.strip() in text for o in options):
        return text
    return _join_sentence(text, options[0].strip())


def _json_answer(text: str) -> str:
    return json.dumps({"answer": text.strip()})


def _bullet_list(text: str, n: int, markers: str = "-*") -> str:
    groups = _groups(_flat_sentences(text), n)
    marker = "*" if "*" in markers else markers[0]
    return "\n".join(f"{marker} {' '.join(g)}" for g in groups) if groups else text


def _bullet_list_2(text: str) -> str:
    return _bullet_list(text, 2, "-")


def _sections(text: str, n: int, marker: str = "SECTION") -> str:
    groups = _groups(_flat_sentences(text), n)
    return "\n\n".join(f"{marker} {i}\n{' '.join(g)}" for i, g in enumerate(groups, 1)) if groups else text


def _title_text(text: str) -> str:
    first = (_flat_sentences(text) or [text])[0]
    toks = [re.sub(r"[^\w'-]", "", w) for w in first.split()[:6]]
    toks = [t for t in toks if t]
    while toks and toks[-1].lower() in _STOPWORDS:
        toks.pop()
    return " ".join(t if t.isupper() else t.capitalize() for t in toks) or "My Answer"


def _title(text: str) -> str:
    return f"<<{_title_text(text)}>>\n\n{text.strip()}"


def _placeholders(text: str, n: int) -> str:
    have = sum(1 for m in re.findall(r"\[([^\[\]\n]*)\]", text) if m.strip())
    names = ["name", "date", "place", "time", "address", "number"]
    extra = [f"[{names[i % len(names)]}]" for i in range(max(n - have, 0))]
    return f"{text.rstrip()}\n\n{', '.join(extra)}" if extra else text


def _postscript(text: str, marker: str = "P.S.") -> str:
    return f"{text.rstrip()}\n\n{marker} Thanks for reading, and let me know if you have questions."


def _highlighted_sections(text: str, n: int) -> str:
    out, done = text, 0
    for s in _flat_sentences(text):
        if done >= n:
            break
        core = s.strip().strip("*").strip()
        if not core or "*" in core or core not in out:
            continue
        out = out.replace(core, f"*{core}*", 1)
        done += 1
    return out


def _ascii_only(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not (c.isalpha() and not c.isascii())
                   and not unicodedata.combining(c))


def _repeat_prompt(text: str, prompt_to_repeat: str) -> str:
    return f"{prompt_to_repeat.strip()}\n\n{text.strip()}"


def _two_responses(text: str) -> str:
    halves = _groups(_flat_sentences(text), 2)
    return f"{' '.join(halves[0])}\n******\n{' '.join(halves[1])}" if halves else text


# Application order: the shape of the reply first (cut, split), then what is added around it, then character-level
# rewrites (which must also cover what was added), then wrappers that enclose everything.
_ORDER: tuple[tuple[str, Callable[..., str]], ...] = (
    ("exclamation_sentence", _exclamation_sentence),
    ("exact_word_count", _exact_word_count),
    ("word_count", _word_count),
    ("sentence_count", _sentence_count),
    ("two_responses", _two_responses),
    ("bullet_list", _bullet_list),
    ("bullet_list_2", _bullet_list_2),
    ("sections", _sections),
    ("paragraph_first_word", _paragraph_first_word),
    ("paragraph_count", _paragraph_count),
    ("highlighted_sections", _highlighted_sections),
    ("include_keywords", _include_keywords),
    ("keyword_frequency", _keyword_frequency),
    ("letter_frequency", _letter_frequency),
    ("constrained_response", _constrained_response),
    ("placeholders", _placeholders),
    ("title", _title),
    ("postscript", _postscript),
    ("starts_with_phrase", _starts_with_phrase),
    ("ends_with_phrase", _ends_with_phrase),
    ("end_checker", _ends_with_phrase),
    ("repeat_prompt", _repeat_prompt),
    ("exclude_keywords", _exclude_keywords),
    ("forbidden_characters", _forbidden_characters),
    ("no_commas", _no_commas),
    ("ascii_only", _ascii_only),
    ("capital_word_frequency", _capital_word_frequency),
    ("lowercase", _lowercase),
    ("all_caps", _all_caps),
    ("uppercase", _all_caps),
    ("valid_json", _json_answer),
    ("json_answer", _json_answer),
    ("double_quotes", _double_quotes),
    ("wrapped_in_quotes", _double_quotes),
)
REPAIRS: dict[str, Callable[..., str]] = dict(_ORDER)
_RANK = {kind: i for i, (kind, _) in enumerate(_ORDER)}


def repair(text: str, constraints: list[dict[str, Any]], *, truncated: bool = False) -> str | None:
    """``text`` tidied and edited to obey every constraint (``[{"kind", "args"}]``), or ``None`` when the edits
    cannot make all of them pass (a kind without a repair, conflicting constraints, a minimum the text is short
    of). ``ValueError`` for a malformed constraint (as the verifier). Deterministic."""
    if not constraints or not text.strip():
        return None
    specs = [(c["kind"], validate_constraint(c["kind"], c.get("args"))) for c in constraints]
    if any(kind not in REPAIRS for kind, _ in specs):
        return None
    out = tidy(text, truncated=truncated)
    for kind, args in sorted(specs, key=lambda s: _RANK[s[0]]):
        out = REPAIRS[kind](out, **args)
    results = check_constraints(out, [{"kind": k, "args": a} for k, a in specs])
    return out if out.strip() and all(r.passed for r in results) else None


def constraints_of(metadata: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A prompt row's constraints (``constraints_from_metadata``), or ``[]`` when it has none or a bad spec: a
    row the verifier would reject is not repaired (the judge reports it)."""
    try:
        return constraints_from_metadata(dict(metadata or {}))
    except ValueError:
        return []


def repair_reply(text: str, metadata: dict[str, Any] | None, *, truncated: bool = False) -> str | None:
    """``repair`` for a reply to a prompt row, its constraints read from the row's metadata (``constraints_of``);
    ``None`` when the row has no valid constraint, the reply already obeys them all (nothing to repair), or no edit
    makes it obey them."""
    constraints = constraints_of(metadata)
    if not constraints or all(r.passed for r in check_constraints(text, constraints)):
        return None
    fixed = repair(text, constraints, truncated=truncated)
    return None if fixed is None or fixed.strip() == text.strip() else fixed
